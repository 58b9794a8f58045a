"""Set-up shared by every test file."""

import signal


def pytest_configure(config):
    """Ctrl-C as from an interactive shell. A run started in the background by a
    non-interactive shell inherits SIGINT ignored, as would the processes the tests start
    (an ignored signal stays ignored across ``exec``); the tests of Ctrl-C need Python's
    handler here and the default action in their children."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
