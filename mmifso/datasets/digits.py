"""scikit-learn's handwritten digits as an mmpretrain dataset (no download)."""
from typing import List

import cv2
import numpy as np
from mmpretrain.datasets import BaseDataset

from mmifso.registry import DATASETS
from mmifso.utils import check_choice


@DATASETS.register_module()
class DigitsDataset(BaseDataset):
    """The 1,797 8x8 digit images shipped inside scikit-learn.

    Images are scaled from 0..16 to 0..255, resized (bilinear) to
    ``image_size`` and repeated to 3 channels; a seeded, stratified split
    gives the ``train`` and ``test`` subsets.

    Args:
        split (str): ``'train'`` or ``'test'``.
        test_ratio (float): Fraction of each class held out for ``test``.
        image_size (int): Side of the output images in pixels.
        seed (int): Seed of the split.
        **kwargs: Passed to mmpretrain's ``BaseDataset`` (``pipeline``, ...).
    """

    METAINFO = {'classes': tuple(str(i) for i in range(10))}

    def __init__(self,
                 split: str = 'train',
                 test_ratio: float = 0.2,
                 image_size: int = 32,
                 seed: int = 0,
                 **kwargs) -> None:
        check_choice('split', split, ('train', 'test'))
        if not 0 < test_ratio < 1:
            raise ValueError(f'test_ratio must be in (0, 1), got {test_ratio}')
        self.split = split
        self.test_ratio = test_ratio
        self.image_size = image_size
        self.seed = seed
        kwargs.setdefault('ann_file', '')
        super().__init__(**kwargs)

    def load_data_list(self) -> List[dict]:
        from sklearn.datasets import load_digits
        digits = load_digits()
        rng = np.random.RandomState(self.seed)
        chosen = []
        for label in range(10):
            idx = np.flatnonzero(digits.target == label)
            rng.shuffle(idx)
            n_test = int(round(len(idx) * self.test_ratio))
            chosen.extend(idx[:n_test] if self.split == 'test' else
                          idx[n_test:])
        data_list = []
        for i in sorted(chosen):
            img = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            img = cv2.resize(img, (self.image_size, self.image_size),
                             interpolation=cv2.INTER_LINEAR)
            data_list.append(
                dict(
                    img=np.repeat(img[:, :, None], 3, axis=2),
                    gt_label=int(digits.target[i])))
        return data_list
