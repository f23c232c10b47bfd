"""Generated terrain: height maps from (type, difficulty, seed) and one reusable heightfield.

:func:`terrain_heights` turns a terrain type, a difficulty ``d`` in ``[0, 1]`` and an
integer seed into a square height map, deterministically (same inputs, same array).
:class:`Terrain` owns one PyBullet heightfield per client, created once and changed in
place (``createCollisionShape(..., replaceHeightfieldIndex=...)``) for each task: removing
and recreating a heightfield leaks collision shapes and costs about ten times more.

Terrain types and how the difficulty scales them (legged_gym's mapping):

========== ===================================================================
flat       zero height everywhere (``d`` ignored)
rough      uniform noise, amplitude ``0.02 + 0.08 d`` m peak to peak, on a 0.2 m
           grid interpolated to the cells
slopes     a cone around the start platform, gradient ``0.4 d`` (rise / run), up
           or down (seed)
stairs     square rings of steps around the platform, 0.3 m deep, step height
           ``0.05 + 0.18 d`` m, up or down (seed)
obstacles  80 random rectangles 0.3-1.0 m wide, heights drawn from
           ``±{0.5, 1} x (0.05 + 0.15 d)`` m
========== ===================================================================

Every map has a flat square platform of half-width :data:`PLATFORM_HALF_WIDTH` at height 0
around the origin, where the robot starts. Grid: :data:`NUM_CELLS` x :data:`NUM_CELLS`
cells of :data:`CELL_SIZE` m (12.7 m square, centred on the origin); ``heights[iy, ix]``
is the height at ``x = (ix - (n - 1) / 2) * cell``, ``y = (iy - (n - 1) / 2) * cell``.
"""

from __future__ import annotations

import math

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

TERRAIN_TYPES: tuple[str, ...] = ("flat", "rough", "slopes", "stairs", "obstacles")
#: Cells per side of the height map. 128² keeps the in-place update near 2-3 ms.
NUM_CELLS = 128
#: Cell size (m).
CELL_SIZE = 0.1
#: Half-width (m) of the flat start platform at height 0 around the origin.
PLATFORM_HALF_WIDTH = 0.5
#: Heights are clipped to ``±HEIGHT_LIMIT`` (m). Two far corner cells are pinned to
#: -HEIGHT_LIMIT and +HEIGHT_LIMIT in every map: PyBullet keeps the heightfield's vertical
#: bounds (and so its vertical origin) from creation on, so every map must share them.
HEIGHT_LIMIT = 3.0
_MAX_RAMP_HEIGHT = 2.5  # slopes and stairs level off at this height (m)
STAIR_DEPTH = 0.3
_ROUGH_GRID = 0.2
_NUM_OBSTACLES = 80


def rough_amplitude(difficulty: float) -> float:
    """Peak-to-peak noise amplitude (m) of rough terrain at ``difficulty``."""
    return 0.02 + 0.08 * difficulty


def slope_gradient(difficulty: float) -> float:
    """Gradient (rise / run) of slopes terrain at ``difficulty``."""
    return 0.4 * difficulty


def step_height(difficulty: float) -> float:
    """Step height (m) of stairs terrain at ``difficulty``."""
    return 0.05 + 0.18 * difficulty


def obstacle_height(difficulty: float) -> float:
    """Largest obstacle height (m) of obstacles terrain at ``difficulty``."""
    return 0.05 + 0.15 * difficulty


def cell_coordinates(n: int = NUM_CELLS, cell: float = CELL_SIZE) -> np.ndarray:
    """Coordinates (m) of the ``n`` cell centres along one axis, centred on 0."""
    return (np.arange(n) - (n - 1) / 2) * cell


def terrain_heights(kind: str, difficulty: float, seed: int, n: int = NUM_CELLS,
                    cell: float = CELL_SIZE) -> np.ndarray:
    """The height map (m) of one terrain, ``float32`` of shape ``(n, n)``, indexed ``[iy, ix]``.

    Deterministic: the same ``(kind, difficulty, seed)`` always gives the same array.

    Args:
        kind: one of :data:`TERRAIN_TYPES`.
        difficulty: ``d`` in ``[0, 1]``, see the module table.
        seed: non-negative integer seeding the random parts.
        n: cells per side (>= 8).
        cell: cell size (m, > 0).
    """
    if kind not in TERRAIN_TYPES:
        raise ValueError(f"terrain type must be one of {TERRAIN_TYPES}, got {kind!r}")
    if not (isinstance(difficulty, (int, float, np.floating)) and 0.0 <= difficulty <= 1.0):
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"terrain seed must be a non-negative integer, got {seed!r}")
    if n < 8 or not cell > 0:
        raise ValueError(f"need n >= 8 cells of size > 0 m, got n={n!r}, cell={cell!r}")
    rng = np.random.default_rng([int(seed), TERRAIN_TYPES.index(kind)])
    coords = cell_coordinates(n, cell)
    x, y = np.meshgrid(coords, coords)  # [iy, ix]
    # Distance outside the start platform: Chebyshev (square rings) and Euclidean (cone).
    ring = np.maximum(np.maximum(np.abs(x), np.abs(y)) - PLATFORM_HALF_WIDTH, 0.0)
    radial = np.maximum(np.hypot(x, y) - PLATFORM_HALF_WIDTH, 0.0)
    sign = 1.0 if rng.random() < 0.5 else -1.0

    if kind == "flat":
        heights = np.zeros((n, n))
    elif kind == "rough":
        amplitude = rough_amplitude(difficulty)
        coarse_n = int(math.ceil((n - 1) * cell / _ROUGH_GRID)) + 1
        coarse = rng.uniform(-amplitude / 2, amplitude / 2, size=(coarse_n, coarse_n))
        heights = _bilinear_upsample(coarse, cell / _ROUGH_GRID, n)
    elif kind == "slopes":
        heights = sign * np.minimum(slope_gradient(difficulty) * radial, _MAX_RAMP_HEIGHT)
    elif kind == "stairs":
        rise = step_height(difficulty)
        steps = np.minimum(np.ceil(ring / STAIR_DEPTH), math.floor(_MAX_RAMP_HEIGHT / rise))
        heights = sign * rise * steps
    else:  # obstacles
        heights = np.zeros((n, n))
        top = obstacle_height(difficulty)
        levels = np.array([-top, -top / 2, top / 2, top])
        extent = (n - 1) * cell / 2
        for _ in range(_NUM_OBSTACLES):
            cx, cy = rng.uniform(-extent, extent, size=2)
            half_x, half_y = rng.uniform(0.15, 0.5, size=2)
            # Index slices of the cells inside the rectangle (cheaper than a mask).
            x0, x1 = np.searchsorted(coords, [cx - half_x, cx + half_x], side="left")
            y0, y1 = np.searchsorted(coords, [cy - half_y, cy + half_y], side="left")
            heights[y0:y1, x0:x1] = levels[rng.integers(len(levels))]

    heights[np.maximum(np.abs(x), np.abs(y)) <= PLATFORM_HALF_WIDTH] = 0.0
    heights = np.clip(heights, -HEIGHT_LIMIT, HEIGHT_LIMIT)
    heights[0, 0], heights[-1, -1] = -HEIGHT_LIMIT, HEIGHT_LIMIT
    return heights.astype(np.float32)


def _bilinear_upsample(coarse: np.ndarray, step: float, n: int) -> np.ndarray:
    """Sample ``coarse`` (grid spacing 1) bilinearly at ``n`` points ``step`` apart per axis."""
    pos = np.arange(n) * step
    i0 = np.minimum(np.floor(pos).astype(int), coarse.shape[0] - 2)
    frac = pos - i0
    rows = coarse[i0] * (1 - frac)[:, None] + coarse[i0 + 1] * frac[:, None]
    return rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]


def _max_without_pinned_corner(heights: np.ndarray) -> float:
    return float(max(heights[:-1].max(), heights[-1, :-1].max()))


class Terrain:
    """One heightfield body in a PyBullet client, reshaped in place.

    Args:
        client: the PyBullet client.
        n: cells per side.
        cell: cell size (m).
    """

    def __init__(self, client: BulletClient, n: int = NUM_CELLS, cell: float = CELL_SIZE) -> None:
        self.client = client
        self.n = n
        self.cell = cell
        self._scale = [cell, cell, 1.0]
        self.heights = terrain_heights("flat", 0.0, 0, n, cell)
        #: Highest ground (m) of the map, the pinned corner left out.
        self.max_height = _max_without_pinned_corner(self.heights)
        self.shape_id = client.createCollisionShape(
            pybullet.GEOM_HEIGHTFIELD, meshScale=self._scale,
            heightfieldData=self.heights.ravel().tolist(),
            numHeightfieldRows=n, numHeightfieldColumns=n)
        # Pinned corners make the vertical bounds symmetric, so the shape's origin is at
        # height 0 and a body at z=0 puts every height at its world z.
        self.body_id = client.createMultiBody(0, self.shape_id, basePosition=[0, 0, 0])
        client.changeVisualShape(self.body_id, -1, rgbaColor=[0.55, 0.6, 0.5, 1.0])

    @property
    def half_extent(self) -> float:
        """Half the side length (m) of the terrain square."""
        return (self.n - 1) * self.cell / 2

    def set_heights(self, heights: np.ndarray) -> None:
        """Replace the height map in place (same shape id, same body). ``heights``: ``(n, n)``
        m, with the corners pinned as :func:`terrain_heights` does."""
        heights = np.asarray(heights, dtype=np.float32)
        if heights.shape != (self.n, self.n):
            raise ValueError(f"heights must have shape {(self.n, self.n)}, got {heights.shape}")
        if heights[0, 0] != -HEIGHT_LIMIT or heights[-1, -1] != HEIGHT_LIMIT:
            raise ValueError("heights must pin corner [0, 0] to -HEIGHT_LIMIT and [-1, -1] to "
                             "+HEIGHT_LIMIT (PyBullet keeps a heightfield's vertical bounds)")
        if np.abs(heights).max() > HEIGHT_LIMIT:
            raise ValueError(f"heights must lie within ±{HEIGHT_LIMIT} m")
        shape = self.client.createCollisionShape(
            pybullet.GEOM_HEIGHTFIELD, meshScale=self._scale,
            heightfieldData=heights.ravel().tolist(), numHeightfieldRows=self.n,
            numHeightfieldColumns=self.n, replaceHeightfieldIndex=self.shape_id)
        if shape != self.shape_id:
            raise RuntimeError(f"PyBullet returned shape {shape}, not the replaced {self.shape_id}")
        self.heights = heights
        self.max_height = _max_without_pinned_corner(heights)

    def set_friction(self, friction: float) -> None:
        """Lateral friction coefficient of the ground (Bullet multiplies it with the
        other body's coefficient)."""
        self.client.changeDynamics(self.body_id, -1, lateralFriction=float(friction))

    def height_at(self, x: float, y: float) -> float:
        """Ground height (m) at world ``(x, y)`` (bilinear; nearest edge outside the map)."""
        return float(self.heights_at(np.array([x]), np.array([y]))[0])

    def heights_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground heights (m) at world points ``(x[i], y[i])``, ``[N]`` each (bilinear;
        nearest edge outside the map)."""
        half = (self.n - 1) / 2
        fx = np.clip(np.asarray(x, dtype=np.float64) / self.cell + half, 0.0, self.n - 1.000001)
        fy = np.clip(np.asarray(y, dtype=np.float64) / self.cell + half, 0.0, self.n - 1.000001)
        ix, iy = fx.astype(np.int64), fy.astype(np.int64)
        tx, ty = fx - ix, fy - iy
        h = self.heights
        top = h[iy, ix] * (1 - tx) + h[iy, ix + 1] * tx
        bottom = h[iy + 1, ix] * (1 - tx) + h[iy + 1, ix + 1] * tx
        return top * (1 - ty) + bottom * ty

    def lowest_height_near(self, x: float, y: float, radius: float) -> float:
        """Lowest ground height (m) among the cells within ``radius`` (m, square window) of
        world ``(x, y)``; the window is clamped to the map."""
        half = (self.n - 1) / 2
        lo_x = min(max(int(math.floor((x - radius) / self.cell + half)), 0), self.n - 1)
        hi_x = min(max(int(math.ceil((x + radius) / self.cell + half)), 0), self.n - 1)
        lo_y = min(max(int(math.floor((y - radius) / self.cell + half)), 0), self.n - 1)
        hi_y = min(max(int(math.ceil((y + radius) / self.cell + half)), 0), self.n - 1)
        return float(self.heights[lo_y:hi_y + 1, lo_x:hi_x + 1].min())
