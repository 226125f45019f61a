"""File formats: validate, then use; write to a temporary file, then rename."""


class FormatError(ValueError):
    """A file is not in the expected format, is corrupt, truncated or of an unknown version."""
