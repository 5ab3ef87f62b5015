"""TorchTrainingPlan: the class users subclass; it implements the round's TrainingPlan interface.

The user writes ``init_model``, ``training_data`` and ``training_step`` (optionally
``init_optimizer``, ``testing_step``, ``predict``, ``postprocess``, ``init_dependencies``); the
round calls the interface methods in order (post_init, load_state, set_model_params,
set_aux_vars, load_data, set_split, testing_routine, training_routine, collect_aux_vars,
after_training_params, save_state). Contract violations raise ``PlanError`` subclasses with
messages that name no file; whatever user code raises propagates, and the calling step turns it
into a ``RoundError``.
"""

import contextlib
import inspect
import logging
import random
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedpipe.args import DpArgs, Metric, TrainingArgs
from fedpipe.plan import DatasetRecord, DataSplit, MetricSink, Scalars, StopCheck, never_stop
from fedpipe.request import thaw
from fedpipe.settings import GpuPolicy
from fedpipe.training.data import DataManager
from fedpipe.training.datasets import tabular_batches
from fedpipe.training.device import select_device
from fedpipe.training.errors import DataError, PlanContractError, PlanError
from fedpipe.training.metrics import evaluate, metric_values
from fedpipe.training.optim import Scaffold
from fedpipe.training.privacy import add_central_noise, make_private, prepare_local_dp_model

__all__ = ["STATE_VERSION", "TorchTrainingPlan", "flatten_params"]

log = logging.getLogger("fedpipe.training")

STATE_VERSION = 1
SCAFFOLD_KEY = "scaffold"


def flatten_params(params: Mapping[str, torch.Tensor]) -> list[float]:
    """All values of ``params`` in mapping order, row-major, as Python floats.

    >>> flatten_params({"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([3])})
    [1.0, 2.0, 3.0]
    """
    if not params:
        return []
    flat = torch.cat([t.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for t in params.values()])
    values: list[float] = flat.tolist()
    return values


_ARITIES: "weakref.WeakKeyDictionary[Callable[..., Any], int]" = weakref.WeakKeyDictionary()


def _positional(fn: Callable[..., Any]) -> int:
    """Number of positional parameters ``fn`` declares (``self`` excluded when bound), cached per function."""
    target = getattr(fn, "__func__", None)
    bound = callable(target) and getattr(fn, "__self__", None) is not None
    function: Callable[..., Any] = target if bound and callable(target) else fn
    try:
        count = _ARITIES.get(function)
    except TypeError:  # a callable that cannot be weakly referenced: not cached
        count = None
    if count is None:
        count = sum(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in inspect.signature(function).parameters.values()
        )
        with contextlib.suppress(TypeError):
            _ARITIES[function] = count
    return max(count - 1, 0) if bound else count


def _arity(fn: Callable[..., Any], name: str) -> int:
    """Number of positional parameters of a user hook (0 or 1); more is a contract violation."""
    count = _positional(fn)
    if count > 1:
        raise PlanContractError(f"`{name}` takes at most one argument, it declares {count}")
    return count


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_device(v, device) for v in obj)
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    raise DataError(f"a batch holds a {type(obj).__name__}, which cannot be moved to {device.type}")


def _state_in_place(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``load_state_dict`` would leave the optimizer's state as it is (same devices and dtypes).

    Conservative: a fused or capturable group, or a state value other than a tensor or a number,
    says no.
    """
    if any(group.get("fused") or group.get("capturable") for group in optimizer.param_groups):
        return False
    for param, state in optimizer.state.items():
        floating = param.is_floating_point()
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                if key == "step":
                    continue
                if value.device != param.device or (floating and value.dtype != param.dtype):
                    return False
            elif not isinstance(value, int | float | bool) and value is not None:
                return False
    return True


def _sync_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Re-cast the optimizer's state onto its parameters' device (torch's own per-key policy).

    A state already in place is left alone: the round trip through ``state_dict`` copies every
    group and costs a tenth of a small model's training.
    """
    if optimizer.state and not _state_in_place(optimizer):
        optimizer.load_state_dict(optimizer.state_dict())


class TorchTrainingPlan:
    """Base class of PyTorch training plans (subclass it; override the user hooks).

    User hooks: ``init_model([model_args]) -> nn.Module`` (required);
    ``init_optimizer([optimizer_args]) -> torch.optim.Optimizer`` (default Adam with the
    researcher's optimizer_args, or ``Scaffold`` when ``aggregator_args["aggregator_name"]`` is
    "scaffold"); ``training_data([dataset_record]) -> DataManager`` (required; the record's
    ``path`` is also ``self.dataset_path``); ``training_step(data, target) -> loss tensor``
    (required); ``testing_step(data, target) -> metric value(s)`` and ``predict(data)`` (optional,
    validation); ``postprocess(params) -> params`` (optional, applied to the update);
    ``init_dependencies() -> list[str]`` (optional, import lines the plan needs).
    """

    def __init__(self) -> None:
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._args: TrainingArgs = TrainingArgs()
        self._model_args: dict[str, Any] = {}
        self._aggregator_args: dict[str, Any] = {}
        self._dependencies: tuple[str, ...] = ()
        self._manager: DataManager | None = None
        self._train_loader: DataLoader[Any] | None = None
        self._test_loader: DataLoader[Any] | None = None
        self._scaffold_deltas: dict[str, torch.Tensor] = {}
        self._device = torch.device("cpu")
        self.dataset_path: str = ""
        self.dataset_record: DatasetRecord | None = None

    # ---------------------------------------------------------------- user hooks

    def init_model(self) -> torch.nn.Module:
        """Build the model (override; may take ``model_args``)."""
        raise PlanContractError("the training plan does not define `init_model`")

    def init_optimizer(self) -> torch.optim.Optimizer:
        """Build the optimizer: Scaffold for a SCAFFOLD aggregator, else Adam, with the researcher's args."""
        model = self.model()
        args = dict(thaw(self._args.optimizer_args))
        if self.uses_scaffold:
            return Scaffold(model.parameters(), **args)
        return torch.optim.Adam(model.parameters(), **args)

    def training_data(self) -> DataManager:
        """Return the DataManager over the local dataset (override; may take the dataset record)."""
        raise PlanContractError("the training plan does not define `training_data`")

    def training_step(self, data: Any, target: Any) -> torch.Tensor:
        """Return the loss of one batch (override)."""
        raise PlanContractError("the training plan does not define `training_step`")

    def predict(self, data: Any) -> Any:
        """The model's output for ``data``, scored by the built-in metrics (override to add e.g. a sigmoid)."""
        return self.model()(data)

    # ---------------------------------------------------------------- accessors

    def model(self) -> torch.nn.Module:
        """The model built by ``init_model`` (after post_init)."""
        if self._model is None:
            raise PlanError("the model is not built yet: post_init has not run")
        return self._model

    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer built by ``init_optimizer`` (after post_init)."""
        if self._optimizer is None:
            raise PlanError("the optimizer is not built yet: post_init has not run")
        return self._optimizer

    @property
    def training_args(self) -> TrainingArgs:
        """The researcher's validated training arguments."""
        return self._args

    @property
    def model_args(self) -> dict[str, Any]:
        """The researcher's model arguments."""
        return self._model_args

    @property
    def aggregator_args(self) -> dict[str, Any]:
        """The researcher's aggregator arguments (resolved files included)."""
        return self._aggregator_args

    @property
    def dependencies(self) -> tuple[str, ...]:
        """The import lines declared by ``init_dependencies``."""
        return self._dependencies

    @property
    def device(self) -> torch.device:
        """The device of the current (or last) training routine."""
        return self._device

    @property
    def uses_scaffold(self) -> bool:
        """True when the researcher's aggregator is SCAFFOLD or the optimizer is ``Scaffold``."""
        name = self._aggregator_args.get("aggregator_name")
        return isinstance(self._optimizer, Scaffold) or (
            isinstance(name, str) and name.strip().lower() == SCAFFOLD_KEY
        )

    # ---------------------------------------------------------------- TrainingPlan interface

    def post_init(
        self,
        *,
        model_args: Mapping[str, Any],
        training_args: TrainingArgs,
        aggregator_args: Mapping[str, Any],
    ) -> None:
        """Seed, then build model and optimizer from the researcher's arguments."""
        self._model_args = dict(model_args)
        self._args = training_args
        self._aggregator_args = dict(aggregator_args)
        seed = training_args.random_seed
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            # not torch.manual_seed: where CUDA is absent it still queues a lazy seeding call (with
            # a formatted stack) per backend, at every round, for the life of the process
            torch.default_generator.manual_seed(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
        self._dependencies = self._declared_dependencies()
        model = self.init_model(*self._hook_args(self.init_model, "init_model", self._model_args))
        if not isinstance(model, torch.nn.Module):
            raise PlanContractError(f"`init_model` must return a torch.nn.Module, got {type(model).__name__}")
        if training_args.dp is not None and training_args.dp.type == "local":
            model = prepare_local_dp_model(model)
        self._model = model
        optimizer_args = dict(thaw(training_args.optimizer_args))
        optimizer = self.init_optimizer(
            *self._hook_args(self.init_optimizer, "init_optimizer", optimizer_args)
        )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PlanContractError(
                f"`init_optimizer` must return a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self._optimizer = optimizer
        if self.uses_scaffold and not isinstance(optimizer, Scaffold):
            raise PlanContractError(
                "the SCAFFOLD aggregator needs the fedpipe.training.Scaffold optimizer, "
                f"`init_optimizer` returned {type(optimizer).__name__}"
            )

    def _hook_args(self, fn: Callable[..., Any], name: str, arg: Any) -> tuple[Any, ...]:
        return (arg,) if _arity(fn, name) == 1 else ()

    def _declared_dependencies(self) -> tuple[str, ...]:
        hook = getattr(self, "init_dependencies", None)
        if hook is None:
            return ()
        if _arity(hook, "init_dependencies") != 0:
            raise PlanContractError("`init_dependencies` takes no argument")
        deps = hook()
        if not isinstance(deps, list | tuple) or not all(isinstance(d, str) for d in deps):
            raise PlanContractError("`init_dependencies` must return a list of import lines (strings)")
        return tuple(deps)

    def optimizer_args(self) -> Mapping[str, Any]:
        """The researcher's optimizer arguments, with the effective learning rate under SCAFFOLD."""
        args = dict(thaw(self._args.optimizer_args))
        if isinstance(self._optimizer, Scaffold):
            args["lr"] = self._optimizer.param_groups[0]["lr"]
        return args

    def set_model_params(self, params: Mapping[str, Any]) -> None:
        """Load a name -> tensor (or array) mapping; unknown names or wrong shapes are refused."""
        model = self.model()
        if not isinstance(params, Mapping):
            raise PlanError(f"model parameters must be a name -> tensor mapping, got {type(params).__name__}")
        own = model.state_dict()
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise PlanError(f"the model has no parameter named {str(unknown[0])[:100]!r}")
        tensors: dict[str, torch.Tensor] = {}
        for name, value in params.items():
            tensor = torch.as_tensor(value)
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise PlanError(
                    f"parameter {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
                )
            tensors[name] = tensor
        missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in tensors]
        if missing:
            log.warning(
                "global parameters lack %d trainable parameters (e.g. %r): kept as initialized",
                len(missing),
                missing[0],
            )
        model.load_state_dict(tensors, strict=False)

    def set_aux_vars(self, aux_vars: Mapping[str, Any]) -> None:
        """Take the server's SCAFFOLD control variate: ``{"scaffold": {"global_state": {name: tensor}}}``."""
        unknown = sorted(set(aux_vars) - {SCAFFOLD_KEY})
        if unknown:
            raise PlanError(f"unknown auxiliary variables {str(unknown[0])[:100]!r} (known: 'scaffold')")
        entry = aux_vars.get(SCAFFOLD_KEY)
        if entry is None:
            return
        optimizer = self.optimizer()
        if not isinstance(optimizer, Scaffold):
            raise PlanError(
                f"SCAFFOLD auxiliary variables received but the optimizer is {type(optimizer).__name__}"
            )
        control = entry.get("global_state") if isinstance(entry, Mapping) else None
        if not isinstance(control, Mapping):
            raise PlanError("SCAFFOLD auxiliary variables must be {'global_state': {name: tensor}}")
        named = self._trainable()
        missing = sorted(set(named) - set(control))
        if missing:
            raise PlanError(f"SCAFFOLD control variate lacks parameter {missing[0]!r}")
        by_param: dict[torch.Tensor, torch.Tensor] = {}
        for name, param in named.items():
            c = torch.as_tensor(control[name])
            if c.shape != param.shape:
                raise PlanError(
                    f"SCAFFOLD control variate {name!r} has shape {tuple(c.shape)}, not {tuple(param.shape)}"
                )
            by_param[param] = c
        optimizer.set_server_control(by_param)

    def collect_aux_vars(self) -> Mapping[str, Any]:
        """SCAFFOLD's ``{"scaffold": {"state": c_i, "delta": c_i(new) - c_i(old)}}`` after training, else {}."""
        optimizer = self._optimizer
        if not isinstance(optimizer, Scaffold):
            return {}
        named = self._trainable()
        state = {name: optimizer.state[p]["c_local"].detach().cpu().clone() for name, p in named.items()}
        delta = {
            name: self._scaffold_deltas.get(name, torch.zeros_like(p)).detach().cpu().clone()
            for name, p in named.items()
        }
        return {SCAFFOLD_KEY: {"state": state, "delta": delta}}

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model().named_parameters() if p.requires_grad}

    # ---------------------------------------------------------------- data

    def load_data(self, dataset: DatasetRecord) -> int:
        """Build the DataManager, apply the record's parameters and loading plan; return the size."""
        self.dataset_record = dataset
        self.dataset_path = dataset.path
        manager = self.training_data(*self._hook_args(self.training_data, "training_data", dataset))
        if not isinstance(manager, DataManager):
            raise PlanContractError(
                f"`training_data` must return a fedpipe.training.DataManager, got {type(manager).__name__}"
            )
        data = manager.dataset
        if dataset.dataset_parameters:
            setter = getattr(data, "set_dataset_parameters", None)
            if not callable(setter):
                raise DataError(
                    f"the dataset ({type(data).__name__}) does not accept the node's dataset parameters "
                    "(it has no `set_dataset_parameters` method)"
                )
            setter(thaw(dataset.dataset_parameters))
        if dataset.data_loading_plan:
            set_dlp = getattr(data, "set_dlp", None)
            if not callable(set_dlp):
                raise DataError(
                    f"the dataset ({type(data).__name__}) does not accept a data loading plan "
                    "(it has no `set_dlp` method)"
                )
            set_dlp(thaw(dataset.data_loading_plan))
        self._manager = manager
        try:
            return len(manager)
        except TypeError as err:
            raise DataError(f"the dataset ({type(data).__name__}) has no usable length") from err

    def set_split(self, split: DataSplit) -> None:
        """Build the training and testing loaders over the round's split (loader args honoured)."""
        if self._manager is None:
            raise PlanError("no data loaded: load_data must run before set_split")
        self._train_loader, self._test_loader = self._manager.loaders(
            split.train_indices,
            split.test_indices,
            thaw(self._args.loader_args),
            seed=self._args.random_seed,
            test_batch_size=self._args.test_batch_size,
        )

    @property
    def train_loader(self) -> DataLoader[Any] | None:
        """The training loader of this round (None when the training subset is empty)."""
        return self._train_loader

    @property
    def test_loader(self) -> DataLoader[Any] | None:
        """The testing loader of this round (None when the testing subset is empty)."""
        return self._test_loader

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
        """Score the model on the testing subset (``testing_step`` if defined, else ``metric``).

        Built-in metrics are computed once over the whole testing subset and reported once;
        a ``testing_step`` is reported per batch (name "Custom") and its sample-weighted mean
        is returned. ``stop`` is polled before each batch; once true, the routine returns at
        once with what it has (nothing reported for an unfinished built-in metric).
        """
        loader = self._test_loader
        if loader is None:
            raise DataError("no testing data: the testing subset is empty")
        model = self.model()
        custom = getattr(self, "testing_step", None)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if callable(custom):
                    return self._custom_testing(custom, loader, report, before_train, stop)
                return self._metric_testing(
                    metric or Metric.ACCURACY, metric_args, loader, report, before_train, stop
                )
        finally:
            model.train(was_training)

    def _custom_testing(
        self,
        step: Callable[[Any, Any], Any],
        loader: DataLoader[Any],
        report: MetricSink,
        before_train: bool,
        stop: StopCheck,
    ) -> dict[str, float]:
        n_total, seen = len(loader.dataset), 0  # type: ignore[arg-type]
        sums: dict[str, float] = {}
        for index, (data, target) in enumerate(self._batches(loader, stop), start=1):
            values = metric_values("Custom", step(data, target))
            size = self._batch_size(data, target)
            seen += size
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * size
            report(self._test_scalars(values, index, before_train, n_total, seen, len(loader)))
        return {key: total / seen for key, total in sums.items()} if seen else {}

    def _metric_testing(
        self,
        metric: Metric,
        metric_args: Mapping[str, Any],
        loader: DataLoader[Any],
        report: MetricSink,
        before_train: bool,
        stop: StopCheck,
    ) -> dict[str, float]:
        truths: list[np.ndarray[Any, Any]] = []
        preds: list[np.ndarray[Any, Any]] = []
        for data, target in self._batches(loader, stop):
            output = self.predict(data)
            preds.append(_numpy(output, "predict"))
            truths.append(_numpy(target, "target"))
        if stop():  # stopped part-way: a metric over some of the batches would mislead
            return {}
        value = evaluate(metric, np.concatenate(truths), np.concatenate(preds), **dict(metric_args))
        values = metric_values(metric.value, value)
        n = sum(len(t) for t in truths)
        report(self._test_scalars(values, 1, before_train, n, n, len(loader)))
        return values

    @staticmethod
    def _test_scalars(
        values: Mapping[str, float], iteration: int, before_train: bool, total: int, seen: int, batches: int
    ) -> Scalars:
        return Scalars(
            metric=dict(values),
            iteration=iteration,
            test=True,
            test_on_global_updates=before_train,
            test_on_local_updates=not before_train,
            total_samples=total,
            batch_samples=seen,
            num_batches=batches,
        )

    @staticmethod
    def _batches(loader: DataLoader[Any], stop: StopCheck = never_stop) -> Iterator[tuple[Any, Any]]:
        """The (data, target) batches of ``loader``; ends early once ``stop()`` is true (checked before each)."""
        if stop():
            return
        fast = tabular_batches(loader)
        for batch in loader if fast is None else fast:
            if not isinstance(batch, list | tuple) or len(batch) != 2:
                raise DataError("each batch must be a (data, target) pair")
            yield batch[0], batch[1]
            if stop():
                return

    @staticmethod
    def _batch_size(data: Any, target: Any) -> int:
        tensor = _first_tensor(data)
        if tensor is None:
            tensor = _first_tensor(target)
        if tensor is None or tensor.ndim == 0:
            return 1
        return len(tensor)

    # ---------------------------------------------------------------- training

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy, stop: StopCheck = never_stop) -> int:
        """Train on the training subset; return the number of samples seen.

        ``num_updates`` (when set) counts optimizer steps across epochs; otherwise ``epochs``
        full passes, each capped at ``batch_maxnum`` batches when that is positive. ``dry_run``
        stops after one batch. The loss is reported on the first and last batch of each epoch
        and every ``log_interval`` iterations (0: only first and last). ``stop`` is polled
        before each batch: once it is true the routine returns early with the samples seen so
        far (the round's wall-time limit; the round then discards this training).
        """
        model, optimizer = self.model(), self.optimizer()
        loader = self._train_loader
        if loader is None:
            raise DataError("no training data: the training subset is empty")
        n_batches = len(loader)
        if n_batches == 0:
            raise DataError(
                "the training loader yields no batch (fewer samples than batch_size with drop_last?)"
            )
        args = self._args
        if args.num_updates is not None and not args.dry_run and (args.epochs or args.batch_maxnum):
            log.warning("num_updates is set: epochs and batch_maxnum are ignored")
        schedule = _schedule(args, n_batches)
        choice = select_device(gpu, args.use_gpu)
        for message in choice.messages:
            log.warning("%s", message)
        device = self._device = choice.device
        trainable = self._trainable()
        dp = args.dp
        # the weights the round started from, cloned only where they may be used (FedProx's proximal
        # term, whenever mu is given, as a subclass's loop may read it even for 0; central DP's
        # noise): a copy of every weight per round is not free for a large model
        keep_initial = args.fedprox_mu is not None or (dp is not None and dp.type == "central")
        initial = {name: p.detach().clone() for name, p in trainable.items()} if keep_initial else {}
        if isinstance(optimizer, Scaffold):
            optimizer.start_round()
        model.to(device)
        _sync_optimizer_state(optimizer)
        model.train()
        try:
            if dp is not None and dp.type == "local":
                dp_model, dp_optimizer, dp_loader = make_private(model, optimizer, loader, dp)
                try:
                    samples = self._run(schedule, dp_loader, dp_optimizer, device, report, initial, stop)
                finally:
                    close = getattr(dp_model, "_close", None)
                    if callable(close):
                        close()
            else:
                samples = self._run(schedule, loader, optimizer, device, report, initial, stop)
        finally:
            model.to("cpu")
            _sync_optimizer_state(optimizer)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if isinstance(optimizer, Scaffold):
            by_param = optimizer.finish_round()
            self._scaffold_deltas = {name: by_param[p] for name, p in trainable.items()}
        if dp is not None and dp.type == "central":
            self._apply_central_dp(initial, dp)
        return samples

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
        args = self._args
        update_mode = args.num_updates is not None and not args.dry_run
        total_batches = sum(schedule)
        expected = _expected_samples(loader, schedule)
        mu = args.fedprox_mu or 0.0
        proximal: list[tuple[torch.Tensor, torch.Tensor]] = []
        if mu > 0:
            proximal = [(p, initial[name].to(device)) for name, p in self._trainable().items()]
        move = device.type != "cpu"
        interval = args.log_interval
        training_step = self.training_step
        samples_total = 0
        iteration = 0
        for epoch, n_epoch_batches in enumerate(schedule, start=1):
            samples_epoch = 0
            batches = iter(loader)
            for index in range(1, n_epoch_batches + 1):
                if stop():
                    return samples_total
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                if not isinstance(batch, list | tuple) or len(batch) != 2:
                    raise DataError("each batch must be a (data, target) pair")
                data, target = batch
                if move:
                    data, target = _to_device(data, device), _to_device(target, device)
                optimizer.zero_grad(set_to_none=True)
                loss = training_step(data, target)
                if not isinstance(loss, torch.Tensor):
                    raise PlanContractError(
                        f"`training_step` must return a loss tensor, got {type(loss).__name__}"
                    )
                if proximal:
                    loss = loss + (mu / 2) * sum((p - p0).pow(2).sum() for p, p0 in proximal)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                iteration += 1
                size = (
                    data.shape[0]
                    if isinstance(data, torch.Tensor) and data.ndim
                    else self._batch_size(data, target)
                )
                samples_epoch += size
                samples_total += size
                position = iteration if update_mode else index
                if (
                    index == 1
                    or index == n_epoch_batches
                    or args.dry_run
                    or (interval > 0 and position % interval == 0)
                ):
                    report(
                        Scalars(
                            metric={"Loss": float(loss.item())},
                            iteration=position,
                            epoch=None if update_mode else epoch,
                            train=True,
                            num_samples_trained=samples_total if update_mode else samples_epoch,
                            total_samples=(sum(expected) if update_mode else expected[epoch - 1])
                            if expected is not None
                            else None,
                            batch_samples=size,
                            num_batches=total_batches if update_mode else n_epoch_batches,
                        )
                    )
                if args.dry_run:
                    return samples_total
        return samples_total

    def _apply_central_dp(self, initial: Mapping[str, torch.Tensor], dp: DpArgs) -> None:
        """Replace the trained parameters by the clipped, noised ones (so every output carries the noise)."""
        trainable = self._trainable()
        released = add_central_noise(initial, {n: p.detach() for n, p in trainable.items()}, dp)
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(released[name])

    # ---------------------------------------------------------------- outputs and state

    def after_training_params(self, *, flatten: bool) -> Any:
        """The update: the state dict (buffers included when ``share_persistent_buffers``), post-processed.

        ``postprocess`` (if defined) and central DP noise apply to both forms; with ``flatten``
        the same mapping is returned as one list of floats (``flatten_params``).
        """
        model = self.model()
        if self._args.share_persistent_buffers:
            params: Mapping[str, Any] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            params = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
        postprocess = getattr(self, "postprocess", None)
        if callable(postprocess):
            params = postprocess(dict(params))
            if not isinstance(params, Mapping) or not all(
                isinstance(v, torch.Tensor) for v in params.values()
            ):
                raise PlanContractError("`postprocess` must return a name -> tensor mapping")
        params = {str(k).removeprefix("_module."): v for k, v in params.items()}
        return flatten_params(params) if flatten else dict(params)

    def save_state(self) -> Mapping[str, Any]:
        """Optimizer state (SCAFFOLD control variates included) and non-trainable buffers, as plain values."""
        optimizer, model = self.optimizer(), self.model()
        return {
            "version": STATE_VERSION,
            "optimizer": {"type": _qualname(optimizer), "state": optimizer.state_dict()},
            "buffers": {name: b.detach().cpu().clone() for name, b in model.named_buffers()},
        }

    def load_state(self, state: Mapping[str, Any]) -> Sequence[str]:
        """Restore what ``save_state`` returned; parts that do not fit are skipped with a warning (D18)."""
        warnings: list[str] = []
        if state.get("version") != STATE_VERSION:
            return [
                f"saved plan state has version {state.get('version')!r}, expected {STATE_VERSION}: ignored"
            ]
        optimizer, model = self.optimizer(), self.model()
        saved = state.get("optimizer")
        if isinstance(saved, Mapping):
            kind = saved.get("type")
            if kind != _qualname(optimizer):
                warnings.append(
                    f"saved optimizer state is for {kind!r}, the plan now uses {_qualname(optimizer)!r}: ignored"
                )
            else:
                try:
                    optimizer.load_state_dict(_int_keys(saved.get("state")))
                except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
                    warnings.append(f"saved optimizer state does not fit this optimizer ({err}): ignored")
        buffers = state.get("buffers")
        if isinstance(buffers, Mapping):
            own = dict(model.named_buffers())
            with torch.no_grad():
                for name, value in buffers.items():
                    target = own.get(name)
                    tensor = torch.as_tensor(value) if value is not None else None
                    if tensor is not None and target is not None and tensor.numel() == target.numel():
                        tensor = tensor.reshape(target.shape)
                    if target is None or tensor is None or tensor.shape != target.shape:
                        warnings.append(f"saved buffer {str(name)[:100]!r} does not fit the model: ignored")
                        continue
                    target.copy_(tensor)
        return warnings


def _int_keys(state_dict: Any) -> dict[str, Any]:
    """Torch optimizer state dicts key per-parameter state by int; make sure they are ints again."""
    if not isinstance(state_dict, Mapping):
        raise TypeError("optimizer state is not a mapping")
    out = dict(state_dict)
    per_param = out.get("state")
    if isinstance(per_param, Mapping):
        out["state"] = {int(k): dict(v) for k, v in per_param.items()}
    groups = out.get("param_groups")
    if isinstance(groups, list | tuple):
        out["param_groups"] = [dict(g) for g in groups]
    return out


def _numpy(value: Any, what: str) -> np.ndarray[Any, Any]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise DataError(f"`{what}` output cannot be turned into an array") from err


def _schedule(args: TrainingArgs, n_batches: int) -> list[int]:
    """How many batches each epoch runs (the last epoch may be partial in ``num_updates`` mode).

    >>> _schedule(TrainingArgs(epochs=2, batch_maxnum=50), 3)
    [3, 3]
    >>> _schedule(TrainingArgs(num_updates=7), 3)
    [3, 3, 1]
    """
    if args.dry_run:
        return [1]
    if args.num_updates is not None:
        full, rest = divmod(args.num_updates, n_batches)
        return [n_batches] * full + ([rest] if rest else [])
    if args.epochs is None:
        raise PlanError("the training arguments give neither `epochs` nor `num_updates`")
    per_epoch = min(args.batch_maxnum, n_batches) if args.batch_maxnum else n_batches
    return [per_epoch] * args.epochs


def _expected_samples(loader: Any, schedule: list[int]) -> list[int] | None:
    """Samples each scheduled epoch will see, when the loader's batch size is known."""
    batch_size = getattr(loader, "batch_size", None)
    dataset = getattr(loader, "dataset", None)
    if not isinstance(batch_size, int) or dataset is None:
        return None
    n = len(dataset)
    full = len(loader)
    drop_last = bool(getattr(loader, "drop_last", False))
    return [n if count == full and not drop_last else min(n, count * batch_size) for count in schedule]
