"""Unmodified Fed-BioMed 6.4.1 torch training plans, run on fedpipe's training layer.

``FedbiomedPlanLoader`` (a ``fedpipe.ports.PlanLoader``) runs the plan source a 6.4.1 researcher
sends; the plan's imports of ``fedbiomed...`` resolve to this package's surface through the plan
module's own ``__import__`` (also inside its methods at run time), never through
``sys.modules``, so a real ``fedbiomed`` installation beside fedpipe is never shadowed. The
returned object is a ``fedpipe.plan.TrainingPlan``; ``split_data_fedbiomed`` is the split step
of a Fed-BioMed round (6.4.1's test split, from the seeded global torch generator).

Supported training-plan surface (what the source may import and call):

* ``fedbiomed.common.training_plans.TorchTrainingPlan`` with the hooks ``init_model([model_args])``,
  ``init_optimizer([optimizer_args])`` (default: Adam over ``optimizer_args``),
  ``init_dependencies()``, ``training_data()``, ``training_step(data, target)``,
  ``testing_step(data, target)``, ``postprocess(params)``, and the methods ``model()``,
  ``optimizer()`` (the torch optimizer), ``model_args()``, ``training_args()``,
  ``loader_args()``, ``optimizer_args()``, ``type()``, ``add_preprocess(method,
  ProcessTypes.DATA_LOADER)``, ``get_model_params()``, ``send_to_device()``, ``node_id()`` and
  ``round()`` (both None), and the attributes ``training_data_loader``, ``testing_data_loader``;
* ``fedbiomed.common.datamanager.DataManager(dataset, **loader_kwargs)``;
* ``fedbiomed.common.dataset.TabularDataset(input_columns, target_columns, transform,
  target_transform)`` over the node's CSV dataset (columns by name or index), ``CustomDataset``
  (``read`` / ``get_item`` / ``__len__``, ``self.path``) and ``Dataset``;
* ``fedbiomed.common.dataloader.PytorchDataLoader``; ``fedbiomed.common.dataset_types.DataReturnFormat``;
* ``fedbiomed.common.constants``: ``ProcessTypes``, ``TrainingPlans``, ``DatasetTypes``,
  ``ErrorNumbers``; ``fedbiomed.common.metrics.MetricTypes``; ``fedbiomed.common.exceptions``
  (``FedbiomedError`` and its usual subclasses); ``fedbiomed.common.logger.logger`` (the node log);
* ``torchvision``: the real one when installed, else stand-ins that import (``from torchvision
  import datasets, transforms`` heads every sent plan) and refuse any use, at load time;
* training arguments: ``epochs``, ``num_updates``, ``batch_maxnum``, ``dry_run``,
  ``log_interval``, ``random_seed``, ``test_ratio``, ``test_on_local_updates``,
  ``test_on_global_updates``, ``test_metric``, ``test_metric_args``, ``test_batch_size``,
  ``shuffle_testing_dataset``, ``loader_args``, ``optimizer_args``, ``fedprox_mu`` (FedProx),
  ``dp_args`` (local DP through Opacus when fedpipe's ``dp`` extra is installed; central DP
  with fedpipe's mechanism), ``use_gpu``, ``share_persistent_buffers``; the legacy SCAFFOLD
  aggregator's ``aggregator_correction``.

Refused with "This node does not support ... in training plans." (when the plan is loaded
where possible): declearn optimizers (``fedbiomed.common.optimizers``) and optimizer auxiliary
variables, scikit-learn plans, ``MedicalFolderDataset`` and the image datasets, data loading
plans, parameter tags (``tag_parameters``), plans that replace what the node drives
(``post_init``, ``training_routine`` ...), and any other ``fedbiomed`` module or name.
"""

from fedpipe.fedbiomed.compat.data import DataManager, PytorchDataLoader, draw_split
from fedpipe.fedbiomed.compat.datasets import CustomDataset, Dataset, TabularDataset
from fedpipe.fedbiomed.compat.errors import FedbiomedError, UnsupportedFeature
from fedpipe.fedbiomed.compat.loader import FedbiomedPlanLoader
from fedpipe.fedbiomed.compat.plan import TorchTrainingPlan
from fedpipe.fedbiomed.compat.steps import split_data_fedbiomed
from fedpipe.fedbiomed.compat.surface import SUPPORTED, UNSUPPORTED

__all__ = [
    "SUPPORTED",
    "UNSUPPORTED",
    "CustomDataset",
    "DataManager",
    "Dataset",
    "FedbiomedError",
    "FedbiomedPlanLoader",
    "PytorchDataLoader",
    "TabularDataset",
    "TorchTrainingPlan",
    "UnsupportedFeature",
    "draw_split",
    "split_data_fedbiomed",
]
