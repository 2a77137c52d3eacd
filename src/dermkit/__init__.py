"""dermkit: datasets, models, training and trustworthy evaluation for skin-lesion AI."""

__version__ = "0.1.0"
