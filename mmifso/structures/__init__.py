from .pruned_structure import (STRUCTURE_FORMAT, StructureMismatchError,
                               apply_structure, export_pruned_model,
                               load_structure, make_structure, save_structure)

__all__ = [
    'STRUCTURE_FORMAT', 'StructureMismatchError', 'apply_structure',
    'export_pruned_model', 'load_structure', 'make_structure',
    'save_structure'
]
