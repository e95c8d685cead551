"""Exceptions of the NF builder (shared by the _image extension and builder.py)."""


class NFBuildError(Exception):
    """The NF source did not compile or link; `.output` holds the compiler/linker text."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


class NFRefusedError(Exception):
    """The NF object breaks the NF ABI (serpens/nf.h); the message names what and where."""
