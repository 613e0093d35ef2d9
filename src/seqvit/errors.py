"""The one exception type users see: a message that names the file or field and the fix."""


class SeqvitError(Exception):
    """Bad input or configuration; the CLI prints the message without a traceback."""
