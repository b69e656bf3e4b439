import os
import sys
from pathlib import Path

# This worktree's code before any installed copy of the project (tests.helpers.ROOT is this folder).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from tests.helpers import ROOT  # noqa: E402

# tests.ray_guard: a test not marked slow that starts Ray fails. pytester: the guard's own test runs an inner pytest.
pytest_plugins = ["tests.ray_guard", "pytester"]


@pytest.fixture
def compose_config():
    """Compose the real conf/ with overrides, as the entry points do."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def flower_task_identity():
    """Messages can only be built inside a running app; unit tests set the identity Flower would."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture(scope="session")
def prior_arrays():
    """The default global model's weights (``tests.helpers.PRIOR_MODEL``), drawn after ``torch.manual_seed(0)``."""
    import torch

    from model.network.networks import PreferenceLSTM
    from tests.helpers import PRIOR_MODEL

    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in PreferenceLSTM(PRIOR_MODEL).state_dict().items()}


@pytest.fixture(scope="session")
def warm_storage(tmp_path_factory, prior_arrays):
    """A device storage with the default architecture's step graph and the tiny pipeline built (seconds, once a
    session); ``tests.helpers.warm`` copies both into a test's own storage (the device room's and the studio's)."""
    from studio.room import DeviceRoom
    from tests.helpers import PRIOR_MODEL

    folder = tmp_path_factory.mktemp("warm") / "events.device"
    with DeviceRoom(folder.parent / "events.db", folder, utc_offset_min=60) as room:
        room.receive_prior(prior_arrays, PRIOR_MODEL, run_key="warm", round_number=1)
        room.pipeline()
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread per test process: on this 2-core shared machine a second thread mostly adds contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
