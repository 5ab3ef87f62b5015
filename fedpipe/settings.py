"""Node settings: who the node is, where it keeps its files, and the owner's policies."""

from pathlib import Path

from attrs import field, frozen
from attrs.converters import optional as optional_converter
from attrs.validators import deep_iterable, ge, gt, instance_of, matches_re, optional

__all__ = ["DEFAULT_ROUND_SECONDS", "GpuPolicy", "NodeSettings"]

DEFAULT_ROUND_SECONDS: float | None = 4 * 3600.0


@frozen(kw_only=True)
class GpuPolicy:
    """The node owner's GPU policy (reference §4.4): allow the GPU, pin one, or force it."""

    gpu: bool = False
    gpu_num: int | None = field(default=None, validator=optional(ge(0)))
    gpu_only: bool = False

    def use_cuda(self, requested: bool, cuda_available: bool) -> bool:
        """Whether training runs on CUDA: ``available and ((requested and gpu) or gpu_only)``.

        >>> GpuPolicy(gpu=True).use_cuda(requested=True, cuda_available=True)
        True
        >>> GpuPolicy(gpu=False).use_cuda(requested=True, cuda_available=True)
        False
        >>> GpuPolicy(gpu_only=True).use_cuda(requested=False, cuda_available=True)
        True
        """
        return cuda_available and ((requested and (self.gpu or self.gpu_only)) or self.gpu_only)


@frozen(kw_only=True)
class NodeSettings:
    """Everything a node owner configures; steps read policy from here, never from the environment.

    ``root`` holds the node's database, its temporary round workspaces and its logs.

    What the owner allows a request to ask of the node (a request may ask for less, never more):

    - ``allowed_origins``: the file-exchange origins (``scheme://host[:port]``) the node may
      connect to besides the server it pulls its tasks from (always allowed); a URL elsewhere
      is refused before any connection.
    - ``max_loader_workers``: data-loader worker processes (``loader_args.num_workers``); 0 by
      default, so a request starts no process.
    - ``max_batch_size``, ``max_epochs``, ``max_updates``: caps on ``loader_args.batch_size``,
      ``epochs`` and ``num_updates`` (None: no cap).
    - ``max_round_seconds``: wall time of one round; past it the round is stopped and answered
      with a ``round_timeout`` error (None: no limit).

    ``workspace_dir`` (None: ``root / "tmp"``) is where rounds make their temporary workspaces.

    A request value over a cap is refused (``bad_training_args``, naming the argument and the
    cap), never clamped. A plan's own DataLoader keywords are approved code and are not capped.
    """

    node_id: str = field(validator=matches_re(r"^[A-Za-z0-9_.\-]{1,128}$"))
    root: Path = field(converter=Path)
    training_plan_approval: bool = True
    secure_aggregation: bool = True
    force_secure_aggregation: bool = False
    gpu: GpuPolicy = field(factory=GpuPolicy, validator=instance_of(GpuPolicy))
    max_download_bytes: int = field(default=4 * 1024**3, validator=ge(1))
    keep_states_per_job: int = field(default=3, validator=ge(1))
    allowed_origins: tuple[str, ...] = field(
        default=(), converter=tuple, validator=deep_iterable(instance_of(str))
    )
    max_loader_workers: int = field(default=0, validator=ge(0))
    max_batch_size: int | None = field(default=None, validator=optional(ge(1)))
    max_epochs: int | None = field(default=None, validator=optional(ge(1)))
    max_updates: int | None = field(default=None, validator=optional(ge(1)))
    max_round_seconds: float | None = field(default=DEFAULT_ROUND_SECONDS, validator=optional(gt(0.0)))
    workspace_dir: Path | None = field(default=None, converter=optional_converter(Path))

    @property
    def tmp_dir(self) -> Path:
        """Where round workspaces are created (and removed when the round ends).

        ``root / "tmp"`` unless ``workspace_dir`` names another folder (a faster disk, a tmpfs).
        """
        return self.root / "tmp" if self.workspace_dir is None else self.workspace_dir

    @property
    def db_path(self) -> Path:
        """The node's SQLite database file."""
        return self.root / "node.sqlite"
