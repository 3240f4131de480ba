"""What the reading workflow asks of active learning, without importing it.

Imports go down: ``learning`` builds on ``tasks`` (it scores tasks and trains on consensus), so
``tasks`` may not import ``learning``. The few places where the workflow shows or records what a
model said (the claim's ``model`` block, the adjudicator's model output, the export manifest's
model versions, the concordance report's model column) or tells learning that labels arrived ask
the ``Learning`` registered here; ``learning.apps`` registers its implementation at start-up. With
no learning app installed, the workflow runs blind to any model (``NoLearning``).
"""

from typing import Protocol


class Learning(Protocol):
    # The table the claim's eligibility joins for each project's model exposure: a relation with
    # columns project_id, suggestions_enabled, is_blind_to_model (tasks.routing splices it into SQL).
    config_relation: str

    def model_block_for_reader(self, task) -> dict | None: ...
    def model_output_for_adjudicator(self, task) -> dict | None: ...
    def on_consensus_stored(self, project_id: int) -> None: ...
    def model_versions(self, task_ids: list[int]) -> dict[int, int]: ...
    def model_samples(self, project, consensus) -> tuple[object | None, dict]: ...
    def scores_marker(self, project) -> int | None: ...


class NoLearning:
    """No model anywhere: readers and adjudicators see none, nothing is trained."""

    config_relation = ("(SELECT NULL::bigint AS project_id, false AS suggestions_enabled, "
                       "true AS is_blind_to_model WHERE false)")

    def model_block_for_reader(self, task) -> None:
        return None

    def model_output_for_adjudicator(self, task) -> None:
        return None

    def on_consensus_stored(self, project_id: int) -> None:
        return None

    def model_versions(self, task_ids: list[int]) -> dict[int, int]:
        return {}

    def model_samples(self, project, consensus) -> tuple[None, dict]:
        return None, {}

    def scores_marker(self, project) -> None:
        return None


_REGISTERED: list[Learning] = []


def register(implementation: Learning) -> None:
    _REGISTERED[:] = [implementation]


def learning() -> Learning:
    return _REGISTERED[0] if _REGISTERED else NoLearning()
