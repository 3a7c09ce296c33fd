"""Face data modules: CelebA (official layout), any image folder, the bundled demo faces, tensors in memory."""

from advwm.data.base import FaceDataModule, FaceDataset, FaceItem, NoImagesError, RepeatedBatchSampler
from advwm.data.celeba import CelebADataModule
from advwm.data.demo import DemoDataModule
from advwm.data.folder import ImageFolderDataModule
from advwm.data.tensors import TensorFaces

__all__ = [
    "CelebADataModule",
    "DemoDataModule",
    "FaceDataModule",
    "FaceDataset",
    "FaceItem",
    "ImageFolderDataModule",
    "NoImagesError",
    "RepeatedBatchSampler",
    "TensorFaces",
]
