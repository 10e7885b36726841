"""Placeholder while the updaters are being written."""


class Updater: pass
class SGD(Updater): pass
class Nesterov(Updater): pass
class AdaGrad(Updater): pass
class RMSProp(Updater): pass
class AdaDelta(Updater): pass
class Adam(Updater): pass
