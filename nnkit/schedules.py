"""Placeholder while the schedules are being written."""
