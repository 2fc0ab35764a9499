"""User-facing errors. Every failure a user can cause is a CkirError subclass whose message
names the file, tensor, op or pass at fault (ARCHITECTURE.md contract 10)."""


class CkirError(Exception):
    """Base of all errors ckir raises on purpose."""


class ParseError(CkirError):
    """Text IR that does not parse; message starts with file:line:col."""


class VerifyError(CkirError):
    """A module that breaks an op's declaration or the IR's structural rules."""


class PassError(CkirError):
    """A pipeline string that is wrong, or a pass that failed."""


class InputError(CkirError):
    """Run-time inputs that do not match a graph's signature."""


class ShapeError(CkirError):
    """Operand types an op's shape rule rejects."""
