"""Validation of string (or small enumerated) options."""
from typing import Any, Sequence


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise.

    One wording for every enumerated option of the package, e.g.
    ``gate must be 'weight' or 'input', got 'output'``.

    Args:
        name (str): The option's name as the user writes it.
        value: The value given.
        choices (Sequence): The accepted values.

    Returns:
        The value, unchanged.

    Raises:
        ValueError: If ``value`` is not one of ``choices``.
    """
    if value in choices:
        return value
    names = [repr(c) for c in choices]
    allowed = names[0] if len(names) == 1 else \
        ', '.join(names[:-1]) + ' or ' + names[-1]
    raise ValueError(f'{name} must be {allowed}, got {value!r}')
