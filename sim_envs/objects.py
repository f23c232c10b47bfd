"""The object catalogue of the grasp family: primitives and pybullet_data mesh objects.

Every object is created at a requested *size*: the largest side of its bounding box in its
own frame (m). Primitives:

* ``box``: a cube with side ``size``;
* ``cylinder``: upright, height ``size``, diameter ``0.7 * size``;
* ``sphere``: diameter ``size``.

Mesh objects (named ``mesh_NNN``) are the shapes of pybullet_data's
``random_urdfs/NNN/NNN.obj`` (times the URDFs' mesh scale 0.015), scaled uniformly to the
requested size. Their collision shape is the convex hull of the mesh, as when the URDF is
loaded, but built from the mesh's *support points* (the extreme vertex in each of
:data:`HULL_DIRECTIONS` directions plus the six axis directions) with
``createCollisionShape(vertices=...)``, not ``loadURDF`` with ``globalScaling``: PyBullet
never frees a collision shape, so shapes are cached per object and size (to 1 mm,
:class:`ShapeCache`), which bounds the memory. Mass and lateral friction come from the
task (the URDFs all declare 0.1 kg and friction 1.0); the inertia is computed by PyBullet
from the collision shape. Visual shapes (the full mesh) are only created when the env
renders.

The 30 meshes were picked from a screening of all 1000; its rules and figures, and the
memory costs: ``docs/families/grasp.md#objects``.

Train and test objects are disjoint: :data:`TEST_OBJECTS` are held out of training.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pybullet
import pybullet_data

ObjectKind = Literal["box", "cylinder", "sphere", "mesh"]

#: Diameter / height of the cylinder primitive.
CYLINDER_ASPECT = 0.7
#: Rolling and spinning friction of every object: small, so that a sphere knocked by the
#: gripper comes to rest instead of rolling forever.
ROLLING_FRICTION = 1e-4
SPINNING_FRICTION = 1e-3
#: Scale of the meshes in the random_urdfs URDFs (their .obj files are in these units).
URDF_MESH_SCALE = 0.015
#: Number of (quasi-uniform) directions whose extreme vertices form a mesh's hull points.
HULL_DIRECTIONS = 256
#: Vertices within this fraction of the size above the lowest one form the base outline,
#: sampled in BOTTOM_DIRECTIONS horizontal directions.
BOTTOM_SLAB = 0.01
BOTTOM_DIRECTIONS = 32
#: Collision margin PyBullet puts around convex hull shapes (m): they rest this high.
HULL_MARGIN = 0.001
#: Objects are built at sizes rounded to this (m); see :class:`ShapeCache`.
SIZE_RESOLUTION = 0.001


@dataclass(frozen=True)
class ObjectSpec:
    """One catalogue entry.

    Attributes:
        name: catalogue name (``"box"``, ``"mesh_004"``, ...).
        kind: ``"box"``, ``"cylinder"``, ``"sphere"`` or ``"mesh"``.
        color: RGBA of the visual shape.
    """

    name: str
    kind: ObjectKind
    color: tuple[float, float, float, float] = (0.85, 0.35, 0.15, 1.0)

    @property
    def obj_path(self) -> str:
        """Absolute path of a mesh object's ``.obj`` file (empty for primitives)."""
        if self.kind != "mesh":
            return ""
        number = self.name.split("_")[1]
        return f"{pybullet_data.getDataPath()}/random_urdfs/{number}/{number}.obj"

    def rest_height(self, size: float) -> float:
        """Height (m) of the body origin above the table when resting upright at ``size``."""
        if self.kind == "mesh":
            return -float(mesh_hull(self.name).min(axis=0)[2]) * size + HULL_MARGIN
        return 0.5 * size


_PALETTE = ((0.85, 0.35, 0.15, 1.0), (0.15, 0.55, 0.85, 1.0), (0.25, 0.75, 0.30, 1.0),
            (0.85, 0.75, 0.20, 1.0), (0.60, 0.30, 0.75, 1.0), (0.90, 0.45, 0.60, 1.0))


def _meshes(numbers: str, offset: int) -> tuple[ObjectSpec, ...]:
    return tuple(ObjectSpec(f"mesh_{n}", "mesh", _PALETTE[(i + offset) % len(_PALETTE)])
                 for i, n in enumerate(numbers.split()))


_PRIMITIVES_TRAIN = (ObjectSpec("box", "box", _PALETTE[0]),
                     ObjectSpec("cylinder", "cylinder", _PALETTE[1]))
_PRIMITIVES_TEST = (ObjectSpec("sphere", "sphere", _PALETTE[2]),)
# Train: 10 flat plates, 2 long plates, 3 bars, 5 upright plates, 4 chunky shapes;
# test: one or two of each kind.
_MESHES_TRAIN = _meshes(
    "075 143 187 537 574 687 643 974 070 866 618 730 133 184 460 072 830 668 623 695 "
    "454 905 004 703", offset=3)
_MESHES_TEST = _meshes("555 899 778 037 236 856", offset=4)

#: Objects used by training tasks.
TRAIN_OBJECTS: tuple[str, ...] = tuple(o.name for o in _PRIMITIVES_TRAIN + _MESHES_TRAIN)
#: Held-out objects, used only by test tasks.
TEST_OBJECTS: tuple[str, ...] = tuple(o.name for o in _PRIMITIVES_TEST + _MESHES_TEST)
#: Every object, by name.
CATALOGUE: dict[str, ObjectSpec] = {
    o.name: o for o in _PRIMITIVES_TRAIN + _MESHES_TRAIN + _PRIMITIVES_TEST + _MESHES_TEST}


def _directions(n: int) -> np.ndarray:
    """(n + 6, 3) unit vectors: a Fibonacci sphere plus the six axis directions."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * i
    sphere = np.stack((np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                       np.cos(polar)), axis=1)
    return np.concatenate((sphere, np.eye(3), -np.eye(3)))


def read_obj_vertices(path: str) -> np.ndarray:
    """(N, 3) vertex positions of a Wavefront ``.obj`` file (file units)."""
    with open(path) as file:
        vertices = [line.split()[1:4] for line in file if line.startswith("v ")]
    return np.array(vertices, dtype=np.float64)


def mesh_hull(name: str) -> np.ndarray:
    """(K, 3) hull points of mesh object ``name`` scaled to size 1 (largest side 1).

    The points are the mesh's extreme vertices over :data:`HULL_DIRECTIONS` directions and
    the six axis directions, so the bounding box and the lowest point are exact.
    Read-only; computed once per process.
    """
    return _mesh_geometry(name)[0]


@functools.cache
def _mesh_geometry(name: str) -> tuple[np.ndarray, float]:
    """(unit-size hull points, largest bounding-box side (m) at the URDF's scale)."""
    spec = CATALOGUE.get(name)
    if spec is None or spec.kind != "mesh":
        raise ValueError(f"{name!r} is not a mesh object of the catalogue")
    vertices = read_obj_vertices(spec.obj_path) * URDF_MESH_SCALE
    if vertices.size == 0 or not np.all(np.isfinite(vertices)):
        raise ValueError(f"mesh {spec.obj_path} has no finite vertices")
    extent = float(np.max(vertices.max(axis=0) - vertices.min(axis=0)))
    extreme = vertices[np.unique(np.argmax(vertices @ _directions(HULL_DIRECTIONS).T, axis=0))]
    # The object stands on a flat base: the outline of the vertices within BOTTOM_SLAB of
    # the lowest one, flattened onto it (a change of at most 1 % of the size). Without it
    # the object would balance on a ridge or a corner and topple after a while.
    bottom = base_outline(vertices, BOTTOM_SLAB * extent)
    hull = np.concatenate((extreme, bottom)) / extent
    hull.flags.writeable = False
    return hull, extent


def base_outline(vertices: np.ndarray, slab: float) -> np.ndarray:
    """(K, 3) horizontal extreme points of the vertices within ``slab`` (m) of the lowest
    one, in BOTTOM_DIRECTIONS directions, all moved down to the lowest height."""
    z_min = vertices[:, 2].min()
    near = vertices[vertices[:, 2] <= z_min + slab]
    angles = np.linspace(0.0, 2.0 * math.pi, BOTTOM_DIRECTIONS, endpoint=False)
    planar = np.stack((np.cos(angles), np.sin(angles)), axis=1)
    outline = near[np.unique(np.argmax(near[:, :2] @ planar.T, axis=0))].copy()
    outline[:, 2] = z_min
    return outline


def base_stability_margin(name: str) -> float:
    """Distance (in units of the size) from the centre of mass's vertical line to the edge
    of the base outline of mesh ``name``; negative if it falls outside (it would tip)."""
    outline = base_outline(mesh_hull(name), BOTTOM_SLAB)[:, :2]
    centre = outline.mean(axis=0)
    order = np.argsort(np.arctan2(*(outline - centre).T[::-1]))
    polygon = outline[order]  # the outline points are convex: sorting by angle orders them
    edges = np.roll(polygon, -1, axis=0) - polygon
    lengths = np.linalg.norm(edges, axis=1)
    if len(polygon) < 3 or np.any(lengths == 0.0):
        return -1.0
    # Signed distance of the origin (the centre of mass) to each edge, positive inside.
    cross = edges[:, 0] * (0.0 - polygon[:, 1]) - edges[:, 1] * (0.0 - polygon[:, 0])
    return float(np.min(cross / lengths))


def quantize_size(size: float) -> float:
    """The physical size (m) built for a requested ``size``: the nearest multiple of
    :data:`SIZE_RESOLUTION` (shapes are cached per size, see :class:`ShapeCache`)."""
    return round(float(size) / SIZE_RESOLUTION) * SIZE_RESOLUTION


class ShapeCache:
    """The collision (and visual) shapes of one PyBullet client, by object and size.

    PyBullet never frees a collision shape (``removeBody`` keeps it and ``resetSimulation``
    does not return its memory either): creating one per task switch would grow the process
    by 2-20 KB per switch forever. Shapes are therefore cached per (object, size quantized
    to :data:`SIZE_RESOLUTION`), which bounds the memory to about 30 MB per client for
    the whole catalogue and all sizes, and makes switching back to a task cheaper.

    Args:
        client_id: PyBullet client id.
        visual: also create visual shapes (needed for rendering only).
    """

    def __init__(self, client_id: int, visual: bool) -> None:
        self.client_id = client_id
        self.visual = visual
        self._shapes: dict[tuple[str, int], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._shapes)

    def get(self, name: str, size: float) -> tuple[int, int]:
        """(collision shape id, visual shape id or -1) of object ``name`` at ``size`` (m)."""
        if name not in CATALOGUE:
            raise ValueError(f"unknown object {name!r}; known: {sorted(CATALOGUE)}")
        key = (name, round(float(size) / SIZE_RESOLUTION))
        if key not in self._shapes:
            self._shapes[key] = self._create(CATALOGUE[name], key[1] * SIZE_RESOLUTION)
        return self._shapes[key]

    def _create(self, spec: ObjectSpec, size: float) -> tuple[int, int]:
        cid, half, visual = self.client_id, 0.5 * size, -1
        if spec.kind == "mesh":
            shape = pybullet.createCollisionShape(
                pybullet.GEOM_MESH, vertices=(mesh_hull(spec.name) * size).tolist(),
                physicsClientId=cid)
            if self.visual:
                scale = URDF_MESH_SCALE * size / _mesh_geometry(spec.name)[1]
                visual = pybullet.createVisualShape(
                    pybullet.GEOM_MESH, fileName=spec.obj_path, meshScale=(scale,) * 3,
                    rgbaColor=spec.color, physicsClientId=cid)
        elif spec.kind == "box":
            shape = pybullet.createCollisionShape(
                pybullet.GEOM_BOX, halfExtents=(half,) * 3, physicsClientId=cid)
            if self.visual:
                visual = pybullet.createVisualShape(
                    pybullet.GEOM_BOX, halfExtents=(half,) * 3, rgbaColor=spec.color,
                    physicsClientId=cid)
        elif spec.kind == "cylinder":
            radius = CYLINDER_ASPECT * half
            shape = pybullet.createCollisionShape(
                pybullet.GEOM_CYLINDER, radius=radius, height=size, physicsClientId=cid)
            if self.visual:
                visual = pybullet.createVisualShape(
                    pybullet.GEOM_CYLINDER, radius=radius, length=size, rgbaColor=spec.color,
                    physicsClientId=cid)
        else:
            shape = pybullet.createCollisionShape(
                pybullet.GEOM_SPHERE, radius=half, physicsClientId=cid)
            if self.visual:
                visual = pybullet.createVisualShape(
                    pybullet.GEOM_SPHERE, radius=half, rgbaColor=spec.color,
                    physicsClientId=cid)
        return shape, visual


def create_object(
    shapes: ShapeCache, name: str, size: float, mass: float, friction: float,
    position: tuple[float, float], yaw: float,
) -> int:
    """Create object ``name`` resting upright on the table (z = 0) at ``position``, ``yaw``.

    Args:
        shapes: the client's shape cache (the body is created in its client).
        name: a key of :data:`CATALOGUE`.
        size: largest bounding-box side (m), built to :data:`SIZE_RESOLUTION`.
        mass: kg. friction: lateral friction coefficient.
        position: (x, y) of the body origin (m). yaw: rotation about z (rad).

    Returns:
        The body id. Remove it with ``pybullet.removeBody`` (its shapes stay cached).
        Sleeping is disabled: a restored state then never depends on whether the body had
        fallen asleep in an earlier episode (a precaution; it costs nothing measurable).
    """
    shape, visual = shapes.get(name, size)
    cid = shapes.client_id
    xyz = (float(position[0]), float(position[1]),
           CATALOGUE[name].rest_height(quantize_size(size)))
    orientation = (0.0, 0.0, math.sin(0.5 * yaw), math.cos(0.5 * yaw))
    body = pybullet.createMultiBody(
        baseMass=mass, baseCollisionShapeIndex=shape, baseVisualShapeIndex=visual,
        basePosition=xyz, baseOrientation=orientation, physicsClientId=cid)
    pybullet.changeDynamics(
        body, -1, lateralFriction=friction, rollingFriction=ROLLING_FRICTION,
        spinningFriction=SPINNING_FRICTION,
        activationState=pybullet.ACTIVATION_STATE_DISABLE_SLEEPING, physicsClientId=cid)
    return body
