"""A task's queue priority from the model's uncertainty, the client's priority, age and reads left.

    priority = w_c * client_priority
             + w_u * uncertainty                      (0..1, normalised by the strategy)
             + w_a * min(age_days / horizon_days, 1)
             + w_r * (1 - reads_outstanding / reads_required)

Higher is served first. ``w_c`` (10) exceeds the other terms together (at most w_u + w_a + w_r
= 2.75), so one step of a client's explicit urgency outranks anything a model or age says.
The age term grows to ``w_a`` over ``horizon_days``; with ``w_a > w_u`` a task the model is
sure about, once ``horizon_days`` old, outranks a fresh task of maximal uncertainty, so
confident work is never starved. The last term favours tasks already partly read, so started
work finishes. Age is taken when the scoring run computes it; scheduled scoring keeps it current.
"""

from dataclasses import dataclass

DEFAULT_WEIGHTS = {"client": 10.0, "uncertainty": 1.0, "age": 1.5, "reads": 0.25, "horizon_days": 14.0}


@dataclass(frozen=True)
class PriorityInputs:
    uncertainty: float
    client_priority: int
    age_days: float
    reads_outstanding: int
    reads_required: int


def weights(overrides: dict | None = None) -> dict:
    """The default weights with a project's overrides; refuses weights that would allow starvation."""
    merged = {**DEFAULT_WEIGHTS, **(overrides or {})}
    unknown = set(merged) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown priority weights: {', '.join(sorted(unknown))}")
    if any(float(v) < 0 for v in merged.values()) or float(merged["horizon_days"]) <= 0:
        raise ValueError("priority weights are non-negative and horizon_days is positive")
    if float(merged["age"]) <= float(merged["uncertainty"]):
        raise ValueError("the age weight must exceed the uncertainty weight, or confident work could wait forever")
    if float(merged["client"]) <= float(merged["uncertainty"]) + float(merged["age"]) + float(merged["reads"]):
        raise ValueError("the client weight must exceed the other weights together")
    return {k: float(v) for k, v in merged.items()}


def task_priority(inputs: PriorityInputs, w: dict | None = None) -> float:
    """The documented formula (module docstring); pure."""
    w = w or weights()
    uncertainty = min(max(float(inputs.uncertainty), 0.0), 1.0)
    age = min(max(inputs.age_days, 0.0) / w["horizon_days"], 1.0)
    required = max(inputs.reads_required, 1)
    started = 1.0 - min(max(inputs.reads_outstanding, 0), required) / required
    return round(w["client"] * inputs.client_priority + w["uncertainty"] * uncertainty + w["age"] * age
                 + w["reads"] * started, 6)
