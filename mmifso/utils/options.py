"""Validation of string (or small enumerated) options."""
from argparse import ArgumentParser, Namespace
from typing import Any, Optional, Sequence

from mmengine.config import DictAction


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


class KeyValueAction(DictAction):
    """mmengine's ``DictAction`` that refuses an item without ``=``.

    ``DictAction`` splits every item at its first ``=``, so ``key`` alone
    ends in a ``not enough values to unpack`` traceback. This action stops
    argparse instead, with the usage line and
    ``argument --cfg-options: expected KEY=VALUE, got 'key'``; well-formed
    items are parsed by ``DictAction`` unchanged.

    Use it wherever a tool takes ``KEY=VALUE`` items (``--cfg-options``
    itself is added by :func:`add_cfg_options`)::

        parser.add_argument('--prune-variant', nargs='+',
                            action=KeyValueAction)
    """

    def __call__(self,
                 parser: ArgumentParser,
                 namespace: Namespace,
                 values: Optional[Sequence[str]],
                 option_string: Optional[str] = None) -> None:
        """Check every item, then parse them as ``DictAction`` does.

        Args:
            parser (ArgumentParser): The parser; its ``error`` exits (status
                2) naming the first item without ``=``.
            namespace (Namespace): Receives the dict at ``self.dest``.
            values (Sequence[str], optional): The ``KEY=VALUE`` items.
            option_string (str, optional): The option as given on the
                command line; the error message names it.
        """
        for item in values or ():
            if '=' not in item:
                name = option_string or '/'.join(
                    self.option_strings) or self.dest
                parser.error(
                    f'argument {name}: expected KEY=VALUE, got {item!r}')
        super().__call__(parser, namespace, values, option_string)


def add_cfg_options(parser: ArgumentParser) -> None:
    """Add ``--cfg-options KEY=VALUE ...`` (config overrides) to ``parser``.

    The one definition of the option for every tool: parsed by
    :class:`KeyValueAction` into the dict ``Config.merge_from_dict`` takes,
    with mmengine's description of the value syntax as help.

    Args:
        parser (ArgumentParser): The tool's parser.
    """
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=KeyValueAction,
        metavar='KEY=VALUE',
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
