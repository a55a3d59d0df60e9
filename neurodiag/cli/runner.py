"""From parsed options to the library's inputs: the ``ScanConfig``, the loaded model and data
(after joining torchrun's process group), and the scan that ``scan`` and ``check`` run."""

from __future__ import annotations

from neurodiag.cli.common import init_distributed, is_rank_zero, progress_bar
from neurodiag.cli.options import Measure, Source
from neurodiag.config import ScanConfig
from neurodiag.loading import prepare
from neurodiag.loading.datasource import DataSource
from neurodiag.loading.model_spec import LoadedModel
from neurodiag.report.model import Report


def scan_config(src: Source, measure: Measure) -> ScanConfig:
    """The ``ScanConfig`` of the model-and-data and metrics options."""
    dims = prepare.parse_feature_dims(measure.feature_dim)
    return ScanConfig(
        eps=measure.eps, tau=measure.tau, dead_window=measure.dead_window,
        gradients=not measure.forward_only, mode=measure.mode, include=tuple(measure.include),
        exclude=tuple(measure.exclude), feature_dims=dims, max_batches=src.max_batches,
        seed=src.seed if src.seed is not None else 0, timeout_s=src.timeout,
        flag_gates=measure.flag_gates,
    ).with_options(rank=measure.rank, rank_max_neurons=measure.rank_max_neurons)  # fmt: skip


def load(model: str, src: Source) -> tuple[LoadedModel, DataSource]:
    """(LoadedModel, DataSource), after joining torchrun's process group if there is one."""
    device = init_distributed(prepare.resolve_device(src.device))
    return prepare.load_model_and_data(
        model, device=device, data=src.data, weights=src.weights, seed=src.seed,
        batch_size=src.batch_size, num_batches=src.max_batches,
        input_shape=prepare.parse_shape(src.input_shape), target=src.target,
    )  # fmt: skip


def scan_from_options(model: str, src: Source, measure: Measure, progress: bool) -> Report:
    """Everything ``neurodiag scan`` does between parsing and rendering; raises
    ``ScanInterrupted`` on Ctrl-C (each command decides what a partial scan means)."""
    from neurodiag.loading.in_memory import count_batches
    from neurodiag.scan import scan

    config = scan_config(src, measure)
    loaded, source = load(model, src)
    total = count_batches(source.batches, config.max_batches)
    with progress_bar(total, progress and is_rank_zero()) as on_batch:
        return scan(
            loaded.model, source.batches, config, loss_fn=loaded.hook("loss_fn"),
            on_batch=on_batch, model_name=loaded.name, data_name=source.description,
        )  # fmt: skip
