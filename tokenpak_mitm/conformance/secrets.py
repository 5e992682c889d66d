"""Moved to ``tokenpak_mitm.core.secret_scan`` (the recorder uses it at run time too); kept for old imports."""

from tokenpak_mitm.core.secret_scan import DEFAULT_CANARIES, KEY_SHAPES, Leak, scan_bytes, scan_paths

__all__ = ["DEFAULT_CANARIES", "KEY_SHAPES", "Leak", "scan_bytes", "scan_paths"]
