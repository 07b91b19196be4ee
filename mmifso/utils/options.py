"""Validation of string (or small enumerated) options and of the config
overrides given on the command line."""
import inspect
import logging
from argparse import ArgumentParser, Namespace
from typing import Any, List, Optional, Sequence

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner


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


#: The top-level config fields something reads after the file is parsed:
#: the Runner's arguments (``Runner.from_cfg``), and the fields the
#: OpenMMLab tools and ``Config`` read themselves.
READ_FIELDS = frozenset(
    set(inspect.signature(Runner.__init__).parameters) - {'self', 'cfg'}
    | {'custom_imports', 'runner_type', 'model_wrapper_cfg', 'tta_model',
       'tta_pipeline', 'compile'})


class ParseTimeVariableError(ValueError):
    """A ``--cfg-options`` key is a variable of the config file that no one
    reads after parsing; the message names the fields holding its value."""


def merge_cfg_options(cfg: Config, options: Optional[dict]) -> None:
    """Merge ``--cfg-options`` into ``cfg``, refusing overrides that would
    change nothing.

    A variable at the top of a config file (``target_flops = 0.5``, then
    ``dict(..., target_flops=target_flops)``) is substituted into the fields
    that use it while the file is parsed. Overriding the variable afterwards
    changes only the variable: the run would silently keep the old value.
    When a key's top-level name is not a field the Runner or the tools read
    (:data:`READ_FIELDS`) and such a field holds its current value, this
    raises, naming those fields (the ones to override; fields named like
    the variable first); when the value is found nowhere (e.g. it entered a
    product), it warns and merges.

    Args:
        cfg (Config): The parsed config, changed in place.
        options (dict, optional): ``key=value`` items (mmengine's
            ``DictAction``), merged with ``Config.merge_from_dict``.

    Raises:
        ParseTimeVariableError: An override of a substituted variable.
    """
    tree = None  # the config as plain dicts, built once when needed
    for key, value in (options or {}).items():
        name = key.split('.', 1)[0]
        if name in READ_FIELDS:
            continue
        current = cfg.get(name, None)
        if tree is None:
            tree = cfg.to_dict()
        uses = [] if isinstance(current, (bool, type(None))) else [
            path for path in _paths_holding(tree, current)
            if path.split('.', 1)[0] in READ_FIELDS
        ]
        # A field named like the variable is where it went
        # (``dict(hook, target_flops=target_flops)``); other equal values
        # (a 0.5 elsewhere) are listed only when there is no such field.
        named = [path for path in uses if path.rsplit('.', 1)[-1] == name]
        uses = named or uses
        if uses:
            shown = value if isinstance(value, str) else repr(value)
            example = f'{uses[0]}{key[len(name):]}={shown}'
            current = repr(current)
            raise ParseTimeVariableError(
                f'--cfg-options {key}={shown} would change nothing: '
                f'{name!r} is a variable of the config file, substituted '
                'where it is used while the file was parsed, and no one '
                'reads it afterwards. Its value ('
                f'{current if len(current) <= 60 else current[:57] + "..."}'
                f') is in {", ".join(uses[:5])}'
                f'{" ..." if len(uses) > 5 else ""}; override that instead, '
                f'e.g. --cfg-options "{example}"')
        print_log(
            f'--cfg-options {key}: {name!r} is not a field the Runner '
            'reads; if it is a variable of the config file, this override '
            'changes nothing (override the fields that use it instead)',
            logger='current', level=logging.WARNING)
    if options:
        cfg.merge_from_dict(options)


def _paths_holding(tree: Any, value: Any, path: tuple = ()) -> List[str]:
    """Dotted paths (list items by index) of the entries of ``tree`` that
    hold ``value`` (see :func:`_holds`), the root excluded."""
    if path and _holds(tree, value):
        return ['.'.join(map(str, path))]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    return [
        found for key, item in items
        for found in _paths_holding(item, value, path + (key, ))
    ]


def _holds(entry: Any, value: Any) -> bool:
    """Whether a config entry holds a substituted variable's value: equal
    scalars (ints and floats by value), equal sequences (lists and tuples
    alike), or for a dict value a dict with all its items (a variable dict
    is usually extended where it is used: ``dict(hook, interval=10)``)."""
    if isinstance(value, dict):
        return isinstance(entry, dict) and bool(value) and all(
            k in entry and _holds(entry[k], v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return isinstance(entry, (list, tuple)) and len(entry) == len(
            value) and all(_holds(e, v) for e, v in zip(entry, value))
    if isinstance(value, bool) or isinstance(entry, bool):
        return entry is value
    if isinstance(value, (int, float)) and isinstance(entry, (int, float)):
        return entry == value
    return type(entry) is type(value) and entry == value
