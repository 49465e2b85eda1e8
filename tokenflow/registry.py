"""The stage registry: ``{kind: {name: StageClass}}`` built from the ``register_*`` hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenflow.stages import KINDS, PROTOCOLS, STEP_KINDS, StageError, missing_members

#: The discovery hook of every stage kind.
REGISTER_HOOKS: dict[str, str] = {
    "inversion": "register_inversions",
    "features": "register_features",
    "keyframes": "register_keyframes",
    "correspondence": "register_correspondences",
    "editor": "register_editors",
    "blender": "register_blenders",
}


class RegistryError(StageError):
    """A stage class is malformed, registered under the wrong hook, or its name is taken."""


@dataclass
class Registry:
    """Stage classes by kind and name, with the plugin that registered each."""

    stages: dict[str, dict[str, type]] = field(default_factory=lambda: {k: {} for k in KINDS})
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, cls: type, owner: str) -> None:
        for attr in ("kind", "name", "version", "requires", "Params"):
            if not hasattr(cls, attr):
                raise RegistryError(f"{owner}: stage class {cls.__name__} has no {attr!r}")
        if cls.kind != kind:
            raise RegistryError(
                f"{owner}: {cls.__name__} has kind {cls.kind!r} but was registered as {kind!r}"
            )
        if not cls.name or not isinstance(cls.name, str):
            raise RegistryError(f"{owner}: {cls.__name__} has no name")
        missing = missing_members(cls, kind)
        if missing:
            what = ", ".join(f"{m}()" if callable(getattr(PROTOCOLS[kind], m, None)) else m
                             for m in missing)
            raise RegistryError(f"{owner}: {kind} stage {cls.name!r} lacks {what}, required by "
                                f"the {kind} protocol (tokenflow.{PROTOCOLS[kind].__name__})")
        if cls.name in self.stages[kind]:
            other = self.owners[(kind, cls.name)]
            raise RegistryError(
                f"{kind} stage name {cls.name!r} is registered twice: by {other} and by {owner}"
            )
        self.stages[kind][cls.name] = cls
        self.owners[(kind, cls.name)] = owner

    def get(self, kind: str, name: str) -> type:
        if kind not in self.stages:
            raise RegistryError(f"unknown stage kind {kind!r}; kinds: {', '.join(KINDS)}")
        try:
            return self.stages[kind][name]
        except KeyError:
            valid = ", ".join(sorted(self.stages[kind])) or "none installed"
            raise RegistryError(f"unknown {kind} {name!r}; installed: {valid}") from None

    def owner(self, kind: str, name: str) -> str:
        return self.owners[(kind, name)]


def call_discovery_hook(pm, hook_name: str, make_register, describe=str) -> None:
    """Call every implementation of the discovery hook ``hook_name`` with
    ``register=make_register(owner)``, ``owner`` naming the plugin (``name (distribution
    version)``). A :class:`RegistryError` from ``register`` passes through; any other exception
    is the plugin's own bug and becomes a RegistryError naming it (``describe(exc)`` its text)."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        owner = describe_plugin(pm, impl.plugin)
        try:
            impl.function(register=make_register(owner))
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"plugin {owner} failed in {hook_name}: {describe(exc)}") from exc


def build_registry(pm) -> Registry:
    """Call every ``register_*`` hook of ``pm`` and collect the classes; duplicates are errors."""
    registry = Registry()
    for kind, hook_name in REGISTER_HOOKS.items():

        def make_register(owner: str, _kind: str = kind):
            return lambda cls: registry.add(_kind, cls, owner)

        call_discovery_hook(pm, hook_name, make_register)
    return registry


def describe_plugin(pm, plugin) -> str:
    """``name (distribution version)`` for messages and ``tf plugins``."""
    name = pm.get_name(plugin) or repr(plugin)
    dist = getattr(pm, "distributions", {}).get(name)
    return f"{name} ({dist[0]} {dist[1]})" if dist else name


assert set(REGISTER_HOOKS) == set(KINDS) and set(STEP_KINDS) <= set(KINDS)
