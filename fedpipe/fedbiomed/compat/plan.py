"""``fedbiomed.common.training_plans.TorchTrainingPlan`` on fedpipe's training layer.

The class subclasses ``fedpipe.training.TorchTrainingPlan``, so the round drives it through the
``fedpipe.plan.TrainingPlan`` interface with fedpipe's machinery (seeding and model/optimizer
construction in ``post_init``, device choice, Opacus local DP, fedpipe's central DP, stop checks,
the update and its post-processing), and it offers the methods a Fed-BioMed 6.4.1 plan calls on
itself (``model()``, ``optimizer()``, ``model_args()``, ``training_args()``, ``loader_args()``,
``optimizer_args()``, ``add_preprocess`` ...). Where 6.4.1 behaves differently from fedpipe's own
plans, this class follows 6.4.1:

* the default optimizer is ``torch.optim.Adam(model.parameters(), **optimizer_args)``; a native
  torch optimizer starts fresh every round (6.4.1 keeps no native optimizer state), and the test
  split (in its drawn order) is the only plan state kept between rounds;
* data are split and shuffled with torch's global generator (seeded by ``random_seed`` in
  ``post_init``), the training loader gets every loader argument, the testing loader only
  ``test_batch_size`` (0: the whole test subset in one batch);
* the training loop is 6.4.1's: epochs of ``min(len(loader), batch_maxnum)`` batches, or
  ``num_updates`` batches over as many passes as needed (``batch_maxnum`` then ignored), FedProx
  as ``mu / 2 * sum ||w - w0||^2`` added to a copy of the loss, the legacy SCAFFOLD correction
  (``aggregator_correction`` subtracted from the gradients), and the loss reported on the first
  and last batch of each epoch and every ``log_interval``-th update (never when it is 0);
* validation runs batch by batch (``testing_step``, else ``test_metric``, default accuracy, on the
  model's raw outputs) and each reported batch carries the running sample count; a
  ``testing_step`` runs without switching the model to eval mode, and the model is left in train
  mode afterwards, as in 6.4.1.
"""

import collections
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedpipe.args import Metric, TrainingArgs
from fedpipe.fedbiomed.compat.constants import ProcessTypes, TrainingPlans
from fedpipe.fedbiomed.compat.data import DataManager, build_loaders, draw_split
from fedpipe.fedbiomed.compat.errors import FedbiomedTrainingPlanError, UnsupportedFeature
from fedpipe.plan import DatasetRecord, DataSplit, MetricSink, Scalars, StopCheck, never_stop
from fedpipe.request import thaw
from fedpipe.settings import GpuPolicy
from fedpipe.training import TorchTrainingPlan as FedpipeTorchPlan
from fedpipe.training.errors import DataError, PlanContractError
from fedpipe.training.metrics import evaluate

__all__ = ["STATE_KIND", "TorchTrainingPlan"]

log = logging.getLogger("fedpipe.fedbiomed.plan")

STATE_KIND = "fedbiomed-6.4.1-split"
"""Marks the plan state this class saves (the test split); any other saved state is ignored."""

_PURE_TRAINING_KEYS = (
    "batch_maxnum",
    "fedprox_mu",
    "log_interval",
    "share_persistent_buffers",
    "dry_run",
    "epochs",
    "use_gpu",
    "num_updates",
)

Device = torch.device


def _send_to_device(value: Any, device: Device) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _send_to_device(v, device) for key, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_send_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_send_to_device(v, device) for v in value]
    raise FedbiomedTrainingPlanError(
        "cannot send data to the device: it must be a torch Tensor, or a list, tuple or dict of them, "
        f"not {type(value).__name__}"
    )


def _infer_batch_size(data: Any) -> int:
    """6.4.1's rule: the length of the data, or of its first item / first modality."""
    if isinstance(data, dict):
        return _infer_batch_size(next(iter(data.values())))
    if isinstance(data, list | tuple):
        return _infer_batch_size(data[0])
    return len(data)


def _float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.numel() != 1:
            raise FedbiomedTrainingPlanError(
                "a metric value must be a number, got a tensor of several values"
            )
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FedbiomedTrainingPlanError(f"a metric value must be a number, got {type(value).__name__}")
    return float(value)


def metric_dict(value: Any, name: str) -> dict[str, float]:
    """6.4.1's metric result dict: a number -> ``{name: v}``, a list -> ``name_1 ..``, a dict as it is.

    >>> metric_dict(0.5, "Custom"), metric_dict([1, 2], "F1"), metric_dict({"loss": torch.tensor(0.25)}, "x")
    ({'Custom': 0.5}, {'F1_1': 1.0, 'F1_2': 2.0}, {'loss': 0.25})
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.shape else float(value)
    if isinstance(value, Mapping):
        return {str(key): _float(v) for key, v in value.items()}
    if isinstance(value, list):
        return {f"{name}_{i + 1}": _float(v) for i, v in enumerate(value)}
    return {name: _float(value)}


class TorchTrainingPlan(FedpipeTorchPlan):
    """Base class of Fed-BioMed torch training plans, run by a fedpipe node (6.4.1's API).

    User hooks (as in 6.4.1): ``init_model([model_args])`` and ``training_data()`` and
    ``training_step(data, target)`` (required); ``init_optimizer([optimizer_args])`` (default
    Adam), ``init_dependencies()``, ``testing_step(data, target)``, ``postprocess(params)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._type = TrainingPlans.TorchTrainingPlan
        self.pre_processes: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.training_data_loader: Any = None
        self.testing_data_loader: Any = None
        self.correction_state: dict[str, torch.Tensor] = {}
        self.aggregator_name: str | None = None
        self._optimizer_args: dict[str, Any] = {}
        self._loader_args: dict[str, Any] = {}
        self._training_args: dict[str, Any] = {}
        self._fb_manager: DataManager | None = None
        self._fb_split: DataSplit | None = None
        self._fb_saved: DataSplit | None = None

    # ---------------------------------------------------------------- the API plans call

    def model_args(self) -> dict[str, Any]:  # type: ignore[override]  # 6.4.1: a method
        """The researcher's model arguments."""
        return self._model_args

    def training_args(self) -> dict[str, Any]:  # type: ignore[override]  # 6.4.1: a method, a dict
        """The training-loop arguments, as 6.4.1's ``pure_training_arguments()`` gives them."""
        return dict(self._training_args)

    def loader_args(self) -> dict[str, Any]:
        """The researcher's data-loader arguments."""
        return self._loader_args

    def optimizer_args(self) -> dict[str, Any]:
        """The researcher's optimizer arguments; under SCAFFOLD ``lr`` maps each layer to its learning rate."""
        args = self._optimizer_args
        if self._is_scaffold() and self._optimizer is not None:
            model = self.model()
            by_tensor = {id(p): name for name, p in model.named_parameters()}
            args["lr"] = {
                by_tensor[id(p)]: group["lr"]
                for group in self._optimizer.param_groups
                for p in group["params"]
                if id(p) in by_tensor
            }
        return args

    def type(self) -> TrainingPlans:
        """The kind of training plan (``TrainingPlans.TorchTrainingPlan``)."""
        return self._type

    def node_id(self) -> str | None:
        """The node's id; a fedpipe node does not hand it to plans (None)."""
        return None

    def round(self) -> int | None:
        """The round number; a fedpipe node does not hand it to plans (None)."""
        return None

    def get_dp_controller(self) -> None:
        """6.4.1's DP controller; this node applies DP itself (None)."""
        return None

    def init_dependencies(self) -> list[str]:
        """Import lines the plan needs (override); the sent source already carries them."""
        return []

    def init_optimizer(self) -> torch.optim.Optimizer:
        """The default optimizer: Adam over the model's parameters with the researcher's optimizer_args."""
        try:
            return torch.optim.Adam(self.model().parameters(), **self._optimizer_args)
        except TypeError as err:
            raise FedbiomedTrainingPlanError(
                f"invalid argument for the default optimizer Adam: {err}"
            ) from err

    def training_data(self) -> DataManager:  # type: ignore[override]  # 6.4.1's DataManager
        """Return the DataManager over the node's dataset (override)."""
        raise FedbiomedTrainingPlanError("training_data must be implemented")

    def tag_parameters(self, name: str) -> set[str]:
        """Parameter tags (``local``, ``persistent``): not supported here, every parameter is shared."""
        return set()

    def add_preprocess(self, method: Callable[..., Any], process_type: ProcessTypes) -> None:
        """Register a pre-processing of the training data loader (``ProcessTypes.DATA_LOADER``)."""
        if not callable(method):
            raise FedbiomedTrainingPlanError("error while adding preprocess, `method` should be callable")
        if not isinstance(process_type, ProcessTypes):
            raise FedbiomedTrainingPlanError(
                "error while adding preprocess, `process_type` should be a `fedbiomed.common.constants.ProcessTypes`"
            )
        self.pre_processes[getattr(method, "__name__", repr(method))] = {
            "method": method,
            "process_type": process_type,
        }

    def get_model_params(
        self, only_trainable: bool = False, exclude_buffers: bool = True, local_params: Any = None
    ) -> dict[str, torch.Tensor]:
        """A copy of the model's parameters (with the buffers unless ``exclude_buffers``)."""
        model = self.model()
        items = model.named_parameters() if exclude_buffers else model.state_dict().items()
        return {
            name: value.detach().clone() for name, value in items if not only_trainable or value.requires_grad
        }

    def send_to_device(self, to_send: Any, device: Device | str) -> Any:
        """Move tensors (inside lists, tuples and dicts) to ``device``."""
        return _send_to_device(to_send, torch.device(device))

    @property
    def uses_scaffold(self) -> bool:
        """Never fedpipe's SCAFFOLD: 6.4.1's legacy SCAFFOLD correction is applied by the loop instead."""
        return False

    def _is_scaffold(self) -> bool:
        return isinstance(self.aggregator_name, str) and self.aggregator_name.lower() == "scaffold"

    # ---------------------------------------------------------------- TrainingPlan interface

    def post_init(
        self,
        *,
        model_args: Mapping[str, Any],
        training_args: TrainingArgs,
        aggregator_args: Mapping[str, Any],
    ) -> None:
        """Take the researcher's arguments as 6.4.1 does, then seed and build model and optimizer."""
        self._optimizer_args = dict(thaw(training_args.optimizer_args))
        self._loader_args = dict(thaw(training_args.loader_args))
        values = training_args.to_dict()
        self._training_args = {key: values[key] for key in _PURE_TRAINING_KEYS}
        name = aggregator_args.get("aggregator_name", self.aggregator_name)
        self.aggregator_name = name if isinstance(name, str) else None
        correction = aggregator_args.get("aggregator_correction")
        if correction is not None:
            if not isinstance(correction, Mapping):
                raise FedbiomedTrainingPlanError(
                    "the plan received invalid 'aggregator_correction' aggregator args"
                )
            self.correction_state = {str(k): torch.as_tensor(v) for k, v in correction.items()}
        super().post_init(model_args=model_args, training_args=training_args, aggregator_args=aggregator_args)

    def set_aux_vars(self, aux_vars: Mapping[str, Any]) -> None:
        """Optimizer auxiliary variables only exist for declearn optimizers, which this node does not run."""
        if aux_vars:
            raise UnsupportedFeature("optimizer auxiliary variables (declearn optimizers)")

    def collect_aux_vars(self) -> Mapping[str, Any]:
        """No auxiliary variables: native torch optimizers have none."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> Sequence[str]:
        """Take the test split (in drawn order) saved by ``save_state``; nothing else is kept between rounds."""
        split = state.get("split") if state.get("kind") == STATE_KIND else None
        if not isinstance(split, Mapping):
            return ["saved plan state is not a Fed-BioMed plan's: ignored"]
        train, test = split.get("training_index"), split.get("testing_index")
        if isinstance(train, list | tuple) and isinstance(test, list | tuple):
            self._fb_saved = DataSplit(
                train_indices=tuple(int(i) for i in train), test_indices=tuple(int(i) for i in test)
            )
        return []

    def save_state(self) -> Mapping[str, Any]:
        """The test split of this round, in drawn order (6.4.1's ``testing_index``/``training_index``)."""
        split = self._fb_split
        return {
            "kind": STATE_KIND,
            "split": {
                "training_index": list(split.train_indices) if split else [],
                "testing_index": list(split.test_indices) if split else [],
                "test_ratio": self._args.test_ratio,
            },
        }

    def load_data(self, dataset: DatasetRecord) -> int:
        """Call ``training_data()``, extend its loader arguments, and load the dataset from the record's path."""
        self.dataset_record = dataset
        self.dataset_path = dataset.path
        manager = self.training_data()  # 6.4.1 passes nothing (a parameter with a default keeps it)
        if not isinstance(manager, DataManager):
            raise PlanContractError(
                "`training_data` must return a `fedbiomed.common.datamanager.DataManager`, "
                f"got {type(manager).__name__}"
            )
        if dataset.dataset_parameters or dataset.data_loading_plan:
            raise DataError(
                "the dataset has dataset parameters or a data loading plan, which Fed-BioMed plans "
                "cannot use on this node"
            )
        manager.extend_loader_args(self._loader_args)
        self._fb_manager = manager
        return manager.load_dataset(dataset.path)

    def fedbiomed_split(
        self, n_samples: int, test_ratio: float, reuse_test: Sequence[int] | None = None
    ) -> DataSplit:
        """The round's train/test split as 6.4.1 makes it (after ``load_data``).

        ``reuse_test`` (the previous round's test indices, when the round keeps them) gives the
        same split again, in the order this plan saved it; otherwise a new split is drawn
        (``fedpipe.fedbiomed.compat.data.draw_split``), which consumes torch's global generator
        exactly where 6.4.1 does.
        """
        manager = self._fb_manager
        if manager is None:
            raise DataError("no data loaded: load_data must run before the split")
        if reuse_test:
            test = tuple(reuse_test)
            saved = self._fb_saved
            if saved is not None and set(saved.test_indices) == set(test):
                return saved
            kept = set(test)
            return DataSplit(
                train_indices=tuple(i for i in range(n_samples) if i not in kept), test_indices=test
            )
        return draw_split(n_samples, test_ratio, shuffle=manager.shuffles)

    def set_split(self, split: DataSplit) -> None:
        """Build the loaders over ``split`` (kept in its order; a re-sorted copy of the saved split gets the saved order)."""
        manager = self._fb_manager
        if manager is None:
            raise DataError("no data loaded: load_data must run before set_split")
        saved = self._fb_saved
        if (
            saved is not None
            and set(saved.test_indices) == set(split.test_indices)
            and set(saved.train_indices) == set(split.train_indices)
        ):
            split = saved
        test_batch_size = getattr(self._args, "test_batch_size", 0)
        train, test = build_loaders(
            manager,
            split.train_indices,
            split.test_indices,
            test_batch_size if isinstance(test_batch_size, int) else 0,
        )
        self._fb_split = split
        self._train_loader = self.training_data_loader = train
        self._test_loader = self.testing_data_loader = test

    # ---------------------------------------------------------------- validation

    def testing_routine(
        self,
        *,
        metric: Metric | None,
        metric_args: Mapping[str, Any],
        report: MetricSink,
        before_train: bool,
        stop: StopCheck = never_stop,
    ) -> Mapping[str, float]:
        """Validate batch by batch as 6.4.1 does; return the sample-weighted mean of each value.

        A batch is reported when ``log_interval`` > 0 and it is the first, the last or every
        ``log_interval``-th batch, with ``batch_samples`` the samples seen so far.
        """
        loader = self._test_loader
        if loader is None:
            raise DataError("no validation dataset was set (test_ratio is 0 or the dataset is too small)")
        model = self.model()
        custom = getattr(self, "testing_step", None)
        chosen = metric or Metric.ACCURACY
        name = "Custom" if callable(custom) else chosen.value
        n_samples, n_batches = len(loader.dataset), max(len(loader), 1)  # type: ignore[arg-type]
        interval = self._args.log_interval
        seen = 0
        sums: dict[str, float] = {}

        def score(data: Any, target: Any) -> Any:
            if callable(custom):
                return custom(data, target)
            model.eval()  # 6.4.1 predicts in eval mode with the built-in metrics only
            output = model(data).detach().cpu().numpy()
            truth = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else target
            return evaluate(chosen, truth, output, **dict(metric_args))

        try:
            with torch.no_grad():
                for index, batch in enumerate(loader, start=1):
                    if stop():
                        return {}
                    data, target = _pair(batch)
                    size = _infer_batch_size(data)
                    seen += size
                    try:
                        values = metric_dict(score(data, target), name)
                    except Exception as err:
                        raise FedbiomedTrainingPlanError(
                            f"an error occurred while computing the {name} metric: {type(err).__name__}: {err}"
                        ) from err
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0.0) + value * size
                    if interval > 0 and (index % interval == 0 or index == 1 or index == n_batches):
                        report(
                            Scalars(
                                metric=values,
                                iteration=index,
                                test=True,
                                test_on_global_updates=before_train,
                                test_on_local_updates=not before_train,
                                total_samples=n_samples,
                                batch_samples=seen,
                                num_batches=n_batches,
                            )
                        )
        finally:
            model.train()
        return {key: total / seen for key, total in sums.items()} if seen else {}

    # ---------------------------------------------------------------- training

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy, stop: StopCheck = never_stop) -> int:
        """Run the registered data-loader pre-processing, then train (fedpipe's routine, 6.4.1's loop)."""
        if self._train_loader is None:
            raise DataError("no training data: the training subset is empty")
        for name, process in self.pre_processes.items():
            if process["process_type"] is not ProcessTypes.DATA_LOADER:
                log.error(
                    "process type %s is not implemented: preprocess %r ignored", process["process_type"], name
                )
                continue
            loader = process["method"](self._train_loader)
            if not isinstance(loader, type(self._train_loader)):
                raise FedbiomedTrainingPlanError(
                    f"the preprocess method `{name}` must return a {type(self._train_loader).__name__}, "
                    f"got {type(loader).__name__}"
                )
            self._train_loader = self.training_data_loader = loader
        if not isinstance(self._train_loader, DataLoader):
            raise FedbiomedTrainingPlanError("a TorchTrainingPlan is trained with a PytorchDataLoader")
        return super().training_routine(report=report, gpu=gpu, stop=stop)

    def _run(
        self,
        schedule: list[int],
        loader: Any,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        report: MetricSink,
        initial: Mapping[str, torch.Tensor],
        stop: StopCheck,
    ) -> int:
        """6.4.1's training loop (its iteration accounting and reporting); ``schedule`` is not used."""
        args = self._args
        plan = _Accountant.of(args, len(loader), self._loader_args, getattr(loader, "batch_size", None))
        mu = args.fedprox_mu
        proximal = (
            [(p, initial[name].to(device)) for name, p in self._trainable().items()] if mu is not None else []
        )
        corrections: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        if self._is_scaffold():
            for name, param in self.model().named_parameters():
                correction = self.correction_state.get(name)
                if correction is not None:
                    corrections.append((param, correction.to(device)))
        move = device.type != "cpu"
        training_step = self.training_step
        total = 0
        for epoch in range(1, plan.epochs + 1):
            n_batches = plan.batches_in(epoch)
            workers: Any = getattr(loader, "num_workers", 0)
            if n_batches == 0 and workers:
                continue  # 6.4.1 also opens an iterator for the empty last epoch; with workers that would spawn them
            batches = iter(loader)
            in_epoch = 0
            for index in range(1, n_batches + 1):
                if stop():
                    return total
                try:
                    data, target = _pair(next(batches))
                except StopIteration:
                    break
                size = _infer_batch_size(data)
                in_epoch += size
                total += size
                if move:
                    data, target = _send_to_device(data, device), _send_to_device(target, device)
                optimizer.zero_grad()
                loss = training_step(data, target)
                if not isinstance(loss, torch.Tensor):
                    raise PlanContractError(
                        f"`training_step` must return a loss tensor, got {type(loss).__name__}"
                    )
                corrected = torch.clone(loss)
                if mu is not None:
                    norm: Any = 0
                    for param, start in proximal:
                        norm += torch.linalg.norm(param - start) ** 2
                    corrected += float(mu) / 2 * norm
                corrected.backward()  # type: ignore[no-untyped-call]
                for param, correction in corrections:
                    if param.grad is not None:
                        param.grad.sub_(correction)
                optimizer.step()
                if plan.logs(epoch, index):
                    report(plan.scalars(epoch, index, float(loss.item()), size, in_epoch, total))
                if args.dry_run:
                    return total
        return total


def _pair(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        raise DataError("each batch must be a (data, target) pair")
    return batch[0], batch[1]


class _Accountant:
    """6.4.1's ``MiniBatchTrainingIterationsAccountant``: how many batches each epoch runs, what is reported.

    There is always one epoch more than asked: empty in ``epochs`` mode, the remainder of the
    updates in ``num_updates`` mode.

    >>> a = _Accountant.of(TrainingArgs(epochs=2, log_interval=5), 15, {"batch_size": 16}, 16)
    >>> a.epochs, [a.batches_in(e) for e in (1, 2, 3)], [i for i in range(1, 16) if a.logs(2, i)]
    (3, [15, 15, 0], [1, 5, 10, 15])
    >>> u = _Accountant.of(TrainingArgs(num_updates=23, log_interval=3), 18, {"batch_size": 12}, 12)
    >>> u.epochs, u.batches_in(1), u.batches_in(2), u.scalars(2, 2, 0.5, 12, 24, 240).iteration
    (2, 18, 5, 20)
    """

    def __init__(
        self, *, args: TrainingArgs, per_epoch: int, epochs: int, last: int, batch_size: int
    ) -> None:
        self.args = args
        self.per_epoch = per_epoch
        self.epochs = epochs
        self.last = last
        self.batch_size = batch_size

    @classmethod
    def of(
        cls, args: TrainingArgs, n_batches: int, loader_args: Mapping[str, Any], loader_batch_size: Any
    ) -> "_Accountant":
        # 6.4.1 reports with the researcher's batch_size (and fails without one): fall back to the loader's
        size = loader_args.get("batch_size", loader_batch_size)
        batch_size = size if isinstance(size, int) and not isinstance(size, bool) else 1
        if args.num_updates is None:
            if args.epochs is None:
                raise FedbiomedTrainingPlanError("must specify one of num_updates or epochs")
            per_epoch = min(n_batches, args.batch_maxnum) if args.batch_maxnum else n_batches
            return cls(args=args, per_epoch=per_epoch, epochs=args.epochs + 1, last=0, batch_size=batch_size)
        full, last = divmod(args.num_updates, n_batches)
        return cls(args=args, per_epoch=n_batches, epochs=full + 1, last=last, batch_size=batch_size)

    def batches_in(self, epoch: int) -> int:
        return self.last if epoch == self.epochs else self.per_epoch

    def logs(self, epoch: int, index: int) -> bool:
        interval = self.args.log_interval
        if interval <= 0:
            return False
        cumulative = (epoch - 1) * self.per_epoch + index
        return (
            cumulative % interval == 0 or self.args.dry_run or index >= self.batches_in(epoch) or index == 1
        )

    def scalars(self, epoch: int, index: int, loss: float, size: int, in_epoch: int, total: int) -> Scalars:
        total_batches = (self.epochs - 1) * self.per_epoch + self.last
        if self.args.num_updates is not None:
            return Scalars(
                metric={"Loss": loss},
                iteration=(epoch - 1) * self.per_epoch + index,
                epoch=None,
                train=True,
                num_samples_trained=total,
                total_samples=self.batch_size * total_batches,
                batch_samples=size,
                num_batches=total_batches,
            )
        in_this = self.batches_in(epoch)
        return Scalars(
            metric={"Loss": loss},
            iteration=index,
            epoch=epoch,
            train=True,
            num_samples_trained=in_epoch,
            total_samples=self.batch_size * in_this if index < in_this else in_epoch,
            batch_samples=size,
            num_batches=self.per_epoch,
        )
