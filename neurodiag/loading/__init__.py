"""Loading models and data from the specs users type (see ``model_spec`` and ``data_spec``)."""

from neurodiag.loading.data_config import DataConfig, read_data_config
from neurodiag.loading.data_spec import accepted_forms, load_data
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.model_spec import LoadedModel, load_model
from neurodiag.loading.sources import REGISTRY, SourceKind, SourceRegistry
from neurodiag.loading.synthetic import infer_recipe, synthetic_source
from neurodiag.loading.weights import load_weights

__all__ = [
    "REGISTRY",
    "DataConfig",
    "DataOptions",
    "DataSource",
    "LoadedModel",
    "SourceKind",
    "SourceRegistry",
    "accepted_forms",
    "infer_recipe",
    "load_data",
    "load_model",
    "load_weights",
    "read_data_config",
    "synthetic_source",
]
