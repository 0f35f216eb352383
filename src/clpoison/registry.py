"""A tiny name → factory registry, so configs can name methods, attacks, defenses, datasets and models."""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterator, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factories).

    >>> r = Registry("colour")
    >>> @r.register("red")
    ... def make_red():
    ...     return "red"
    >>> r.get("red")()
    'red'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def params(self, name: str, params: Optional[dict] = None, where: Optional[str] = None) -> tuple[Any, Any]:
        """``(cls, cls.Params)`` for a registered component class and its params mapping (validated; errors name
        ``where.key``, default ``KIND.params``)."""
        cls: Any = self.get(name)
        return cls, cls.Params.from_dict(dict(params or {}), where or f"{self.kind}.params")

    def build(self, name: str, params: Optional[dict] = None, where: Optional[str] = None) -> Any:
        """The component ``name`` built from its params mapping: ``cls(cls.Params.from_dict(params))``
        (attacks, defenses; a method also needs its backbone, so it uses :meth:`params`)."""
        cls, p = self.params(name, params, where)
        return cls(p)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
