"""The web dashboard, ``nnkit ui``: the experiments of a store, each one's live figures,
configuration and events, steering controls, and runs compared (extra ``nnkit[ui]``).

``nnkit.ui.runs`` reads run directories (confined to what a store records, bounded, cached,
downsampled) and needs nothing beyond the core; ``nnkit.ui.server`` is the Starlette app and
the uvicorn server, imported only by ``nnkit ui``. The pages' script and styles are
``nnkit/ui/static/``: plain JavaScript and SVG, nothing fetched from elsewhere.
"""
