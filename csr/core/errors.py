class CSRError(Exception):
    """A user-facing error: the message names the file, record or config key at fault."""
