"""What a model version is: the network, its input grid and how volumes are brought onto it."""

from dataclasses import asdict, dataclass, fields

TASKS = ("classification", "segmentation")
ARCHITECTURES = {
    "classification": ("densenet121", "densenet"),
    "segmentation": ("unet",),
}
# Soft-tissue window (level, width) in HU when a CT spec names none.
DEFAULT_CT_WINDOW = (40.0, 400.0)


@dataclass(frozen=True)
class ModelSpec:
    """A network and its preprocessing, stored as JSON beside each model version.

    ``window`` is (level, width) in HU for CT. ``spacing`` (mm, same axis order as the volume) makes
    preprocessing resample to that spacing first and then pad/crop to ``grid``; without it the volume
    is resized to ``grid`` whatever its field of view. ``architecture="densenet"`` is MONAI's DenseNet
    with ``init_features``/``growth_rate``/``block_config`` (small variants for tests and the benchmark);
    ``"densenet121"`` ignores them. ``channels`` sets the UNet's levels. ``ordinal`` marks a grade
    (classes in order): evaluation adds quadratic-weighted kappa.
    """

    task: str
    architecture: str
    spatial_dims: int
    grid: tuple[int, ...]
    num_classes: int
    modality: str = "CT"
    window: tuple[float, float] | None = None
    dropout: float = 0.2
    spacing: tuple[float, ...] | None = None
    ordinal: bool = False
    init_features: int = 64
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    channels: tuple[int, ...] = (16, 32, 64, 128)

    def __post_init__(self):
        for name in ("grid", "window", "spacing", "block_config", "channels"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.architecture not in ARCHITECTURES[self.task]:
            raise ValueError(f"architecture for {self.task} must be one of {ARCHITECTURES[self.task]}")
        if self.spatial_dims not in (2, 3) or len(self.grid) != self.spatial_dims:
            raise ValueError("spatial_dims must be 2 or 3 and grid must have that many sizes")
        if any(int(size) < 8 for size in self.grid):
            raise ValueError("every grid size must be at least 8 voxels")
        if self.spacing is not None and len(self.spacing) != self.spatial_dims:
            raise ValueError("spacing must have one value per spatial dimension")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2 (segmentation counts the background)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.window is not None and (len(self.window) != 2 or self.window[1] <= 0):
            raise ValueError("window is (level, width) with a positive width")

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model spec fields: {sorted(unknown)}")
        return cls(**data)
