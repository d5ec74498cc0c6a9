"""Datasets: the built-in synthetic fine-grained set, CUB-200-2011 and a factory for the usual FGVC benchmarks."""

from .builder import DATASET_LAYOUTS, ClassInfoDataset, create_dataset, list_datasets
from .cub import CUB_LAYOUT, Cub2011
from .dogs import DOGS_LAYOUT, StanfordDogs
from .inat import INAT_LAYOUT, INaturalist
from .integrity import BadSample, ScanReport, SkipBadSamples, check_image, sample_paths, scan_images
from .nabirds import NABIRDS_LAYOUT, NABirds
from .synthetic import BEAK_SHAPES, PART_COLORS, SYNTHETIC_SPLITS, SyntheticFineGrained
from .synthetic_pretrain import PRETRAIN_NUM_CLASSES, SyntheticPretrain, pretrain_class_table

__all__ = [
    'BEAK_SHAPES',
    'BadSample',
    'ScanReport',
    'SkipBadSamples',
    'check_image',
    'sample_paths',
    'scan_images',
    'CUB_LAYOUT',
    'ClassInfoDataset',
    'Cub2011',
    'DATASET_LAYOUTS',
    'DOGS_LAYOUT',
    'INAT_LAYOUT',
    'INaturalist',
    'NABIRDS_LAYOUT',
    'NABirds',
    'StanfordDogs',
    'PART_COLORS',
    'PRETRAIN_NUM_CLASSES',
    'SYNTHETIC_SPLITS',
    'SyntheticFineGrained',
    'SyntheticPretrain',
    'create_dataset',
    'list_datasets',
    'pretrain_class_table',
]
