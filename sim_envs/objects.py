"""The object catalogue of the grasp family: primitives and pybullet_data mesh objects.

Every object is created at a requested *size*: the largest side of its bounding box in its
own frame (m). Primitives:

* ``box``: a cube with side ``size``;
* ``cylinder``: upright, height ``size``, diameter ``0.7 * size``;
* ``sphere``: diameter ``size``.

Mesh objects (named ``mesh_NNN``) are the shapes of pybullet_data's
``random_urdfs/NNN/NNN.obj`` (times the URDFs' mesh scale 0.015), scaled uniformly to the
requested size. Their collision shape is the convex hull of the mesh, as when the URDF is
loaded, but built from the mesh's *support points* (the extreme vertex in each of 256
directions plus the six axis directions: 25-70 points, within 1.4 % of the size of the
full hull) with ``createCollisionShape(vertices=...)``. Why not ``loadURDF`` with
``globalScaling``: PyBullet never frees a collision shape (``removeBody`` keeps it, only
``resetSimulation`` frees it), and a URDF mesh costs about 200 KB per load, a support-point
hull 15-25 KB. Mass and lateral friction come from the task (the URDFs all declare 0.1 kg
and friction 1.0); the inertia is computed by PyBullet from the collision shape. Visual
shapes (the full mesh) are only created when the env renders.

All 1000 meshes were screened with the shapes built here: ``random_urdfs/168`` has only
NaN vertices (it falls through the floor); the 26 kept are the ones that rest still on
their bottom face (< 0.2 mm drift and < 0.5 deg tilt over 2 s, at 2, 5 and 8 cm, 0.05 to
1 kg, random yaw; ``tests/test_grasp.py`` checks it again), have a horizontal side of at
most 0.8 of their size (more of them fit the 8 cm gripper), are at least 0.2 of their size
tall and have their origin near their centre (within 0.15 of their size).

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
_MESHES_TRAIN = _meshes(
    "075 091 143 165 194 248 419 476 554 574 609 667 668 687 689 695 715 726 730 830",
    offset=3)
_MESHES_TEST = _meshes("146 236 511 570 625 986", offset=4)

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
    extreme = np.argmax(vertices @ _directions(HULL_DIRECTIONS).T, axis=0)
    # The face the object stands on must keep its outline, or the object may tip over:
    # add the horizontal extreme points of the vertices near the bottom.
    bottom = np.flatnonzero(vertices[:, 2] <= vertices[:, 2].min() + BOTTOM_SLAB * extent)
    angles = np.linspace(0.0, 2.0 * math.pi, BOTTOM_DIRECTIONS, endpoint=False)
    planar = np.stack((np.cos(angles), np.sin(angles), np.zeros_like(angles)), axis=1)
    bottom_extreme = bottom[np.argmax(vertices[bottom] @ planar.T, axis=0)]
    hull = vertices[np.unique(np.concatenate((extreme, bottom_extreme)))] / extent
    hull.flags.writeable = False
    return hull, extent


def create_object(
    client_id: int, name: str, size: float, mass: float, friction: float,
    position: tuple[float, float], yaw: float, visual: bool = True,
) -> int:
    """Create object ``name`` resting upright on the table (z = 0) at ``position``, ``yaw``.

    Args:
        client_id: PyBullet client id.
        name: a key of :data:`CATALOGUE`.
        size: largest bounding-box side (m).
        mass: kg. friction: lateral friction coefficient.
        position: (x, y) of the body origin (m). yaw: rotation about z (rad).
        visual: also create a visual shape (needed for rendering only).

    Returns:
        The body id. Sleeping is disabled so that restored states replay identically.
    """
    if name not in CATALOGUE:
        raise ValueError(f"unknown object {name!r}; known: {sorted(CATALOGUE)}")
    spec = CATALOGUE[name]
    xyz = (float(position[0]), float(position[1]), spec.rest_height(size))
    orientation = (0.0, 0.0, math.sin(0.5 * yaw), math.cos(0.5 * yaw))
    half = 0.5 * size
    cid = client_id
    visual_shape = -1
    if spec.kind == "mesh":
        shape = pybullet.createCollisionShape(
            pybullet.GEOM_MESH, vertices=(mesh_hull(name) * size).tolist(), physicsClientId=cid)
        if visual:
            scale = URDF_MESH_SCALE * size / _mesh_geometry(name)[1]
            visual_shape = pybullet.createVisualShape(
                pybullet.GEOM_MESH, fileName=spec.obj_path, meshScale=(scale, scale, scale),
                rgbaColor=spec.color, physicsClientId=cid)
    elif spec.kind == "box":
        shape = pybullet.createCollisionShape(
            pybullet.GEOM_BOX, halfExtents=(half, half, half), physicsClientId=cid)
        if visual:
            visual_shape = pybullet.createVisualShape(
                pybullet.GEOM_BOX, halfExtents=(half, half, half), rgbaColor=spec.color,
                physicsClientId=cid)
    elif spec.kind == "cylinder":
        radius = CYLINDER_ASPECT * half
        shape = pybullet.createCollisionShape(
            pybullet.GEOM_CYLINDER, radius=radius, height=size, physicsClientId=cid)
        if visual:
            visual_shape = pybullet.createVisualShape(
                pybullet.GEOM_CYLINDER, radius=radius, length=size, rgbaColor=spec.color,
                physicsClientId=cid)
    else:
        shape = pybullet.createCollisionShape(
            pybullet.GEOM_SPHERE, radius=half, physicsClientId=cid)
        if visual:
            visual_shape = pybullet.createVisualShape(
                pybullet.GEOM_SPHERE, radius=half, rgbaColor=spec.color, physicsClientId=cid)
    body = pybullet.createMultiBody(
        baseMass=mass, baseCollisionShapeIndex=shape, baseVisualShapeIndex=visual_shape,
        basePosition=xyz, baseOrientation=orientation, physicsClientId=cid)
    pybullet.changeDynamics(
        body, -1, lateralFriction=friction, rollingFriction=ROLLING_FRICTION,
        spinningFriction=SPINNING_FRICTION,
        activationState=pybullet.ACTIVATION_STATE_DISABLE_SLEEPING, physicsClientId=cid)
    return body
