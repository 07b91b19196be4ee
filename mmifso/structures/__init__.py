from .pruned_structure import (STRUCTURE_FORMAT, StructureMismatchError,
                               load_structure, make_structure, save_structure)

__all__ = [
    'STRUCTURE_FORMAT', 'StructureMismatchError', 'load_structure',
    'make_structure', 'save_structure'
]
