"""``@workflow.virtual_actor``: declaring actor types, and the registry of types by name."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from actorflow._ids import check_actor_id, check_id
from actorflow.actor._context import current_turn, invoker
from actorflow.actor._handle import ActorHandle
from actorflow.actor._state import defines_custom_state
from actorflow.errors import (
    ActorArgumentsError,
    ActorError,
    ActorEventNotFoundError,
    ActorMethodNotFoundError,
    ActorNotFoundError,
    ActorTypeNotFoundError,
    ConfigError,
    InvalidDefinitionError,
)

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])

_READONLY = "__actorflow_readonly__"
_EVENT = "__actorflow_event__"
_RESERVED = {"get_or_create", "get", "list_ids", "delete", "exists", "options"}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    func: Callable[..., Any]
    readonly: bool
    is_async: bool
    signature: inspect.Signature | None

    def __post_init__(self) -> None:
        # (required, most) positional arguments when every parameter after ``self`` may be
        # passed by position: then positional arguments alone fit exactly when their count is
        # in that range, and the common call skips ``Signature.bind`` (a tenth of a turn).
        counts = None
        if self.signature is not None:
            params = list(self.signature.parameters.values())
            positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            if params and all(p.kind in positional for p in params):
                required = sum(1 for p in params[1:] if p.default is inspect.Parameter.empty)
                counts = (required, len(params) - 1)
        object.__setattr__(self, "_positional", counts)

    def check_args(self, type_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise :class:`ActorArgumentsError` unless the arguments fit the signature."""
        if self.signature is None:
            return
        counts: tuple[int, int] | None = self._positional  # type: ignore[attr-defined]
        if counts is not None and not kwargs and counts[0] <= len(args) <= counts[1]:
            return
        try:
            self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ActorArgumentsError(
                type_name, None, f"invalid arguments for {type_name}.{self.name}: {exc}"
            ) from None


class MethodStep:
    """``self.method.step(...)`` inside an actor's method, as Ray 1.x's virtual actors had it:
    a workflow step calling ``method`` of the actor whose turn is running (return it, and it
    runs once the turn has committed, with the state that turn left). The actor is the running
    turn's, so a method shared by several actor types serves each; only the method's name is
    held, so the function stays as picklable as it was."""

    def __init__(self, method: str) -> None:
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        turn = current_turn()
        if turn is None:
            raise ActorError(
                "?",
                None,
                f"self.{self.method}.step(...) works inside an actor's method; "
                f"elsewhere use Cls.get(actor_id).{self.method}.step(...)",
            )
        handle = lookup(turn.actor_type).get(turn.actor_id)
        return getattr(handle, self.method).step(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<actor step {self.method}>"


class VirtualActorClass:
    """A virtual actor type. ``Cls.get_or_create(id)`` gives a handle to one durable instance.

    Instances are never built directly (``Cls()`` raises); each actor lives in storage and is
    loaded for each call. Type names are the class name unless ``name=`` is given.
    """

    def __init__(
        self,
        cls: type[Any],
        name: str | None = None,
        schema_version: int = 1,
        activate: bool = True,
        errors: Mapping[type[BaseException], int] | None = None,
    ) -> None:
        self.cls = cls
        self.type_name = check_id("actor type name", name or cls.__name__)
        if ":" in self.type_name or "/" in self.type_name:
            raise ConfigError(f"actor type name {self.type_name!r} may not contain ':' or '/'")
        if isinstance(schema_version, bool) or not isinstance(schema_version, int) or schema_version < 1:
            raise ConfigError(f"schema_version must be an integer >= 1, got {schema_version!r}")
        self.schema_version = schema_version
        get, put = defines_custom_state(cls)
        if get != put:
            raise InvalidDefinitionError(
                f"virtual actor {self.type_name}: define both __getstate__ and __setstate__, or neither "
                f"(only {'__getstate__' if get else '__setstate__'} is defined)"
            )
        self.custom_state = get
        self.migrate: Callable[[Any, int], Any] | None = getattr(cls, "__migrate__", None)
        self.methods: dict[str, MethodInfo] = {}
        for attr, value in inspect.getmembers(cls):
            if attr.startswith("_") or attr in _RESERVED:
                continue
            # Only functions defined as instance methods: a staticmethod or classmethod would
            # run without the actor's state (or with the class) yet commit a turn.
            if not inspect.isfunction(inspect.getattr_static(cls, attr)):
                continue
            try:
                sig: inspect.Signature | None = inspect.signature(value)
            except (TypeError, ValueError):
                sig = None
            self.methods[attr] = MethodInfo(
                attr, value, bool(getattr(value, _READONLY, False)), inspect.iscoroutinefunction(value), sig
            )
            if "step" not in vars(value):
                value.step = MethodStep(attr)  # self.<method>.step(...), as in Ray 1.x
        self.events: dict[str, str] = {}
        for info in self.methods.values():
            event = getattr(info.func, _EVENT, None)
            if event is not None:
                if event in self.events:
                    raise ConfigError(f"virtual actor {self.type_name}: two handlers for event {event!r}")
                self.events[event] = info.name
        init = inspect.getattr_static(cls, "__init__", object.__init__)
        self.init_signature = inspect.signature(init if init is not object.__init__ else (lambda self: None))
        #: The ``__init__`` parameters a caller must give (none: a call can activate the actor).
        self.required_init = [
            p.name
            for p in list(self.init_signature.parameters.values())[1:]
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if not isinstance(activate, bool):
            raise ConfigError(f"virtual actor {self.type_name}: activate must be a bool, not {activate!r}")
        self.activate = activate
        self.errors = _check_errors(self.type_name, errors)
        #: Whether a call on an id that was never created creates it (``__init__()``) in the
        #: call's own commit.
        self.activates = activate and not self.required_init
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        register(self)

    # -------------------------------------------------------------- declaring
    def method(self, name: str) -> MethodInfo:
        info = self.methods.get(name)
        if info is None:
            raise ActorMethodNotFoundError(self.type_name, name)
        return info

    def event_handler(self, event: str) -> str:
        """The method handling external event ``event``; raises ``ActorEventNotFoundError``."""
        method = self.events.get(event)
        if method is None:
            raise ActorEventNotFoundError(self.type_name, event)
        return method

    def check_init_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self.init_signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ActorArgumentsError(
                self.type_name, None, f"invalid arguments for {self.type_name}.__init__: {exc}"
            ) from None

    def new_instance(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        new: Any = self.cls.__new__
        obj = new(self.cls)
        obj.__init__(*args, **kwargs)
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"virtual actor {self.type_name} cannot be instantiated directly; "
            f"use {self.type_name}.get_or_create(actor_id, ...)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_class, (self.cls, self.type_name, self.schema_version, self.activate, self.errors))

    def error_status(self, exc: BaseException) -> int | None:
        """The status the class declared (``errors=``) for ``exc``'s type or its nearest
        ancestor, or ``None``."""
        for kind in type(exc).__mro__:
            if kind in self.errors:
                return self.errors[kind]
        return None

    def not_found(self, actor_id: str, *, deleted: bool) -> ActorNotFoundError:
        """The error for a call on an actor that is not stored, saying how to make one."""
        t = self.type_name
        if deleted:
            hint = f"it was deleted; create it again (POST /v1/actors/{t}/{actor_id}, or {t}.get_or_create)"
        elif self.required_init:
            hint = (
                f"{t}.__init__ needs {', '.join(self.required_init)}: create it first "
                f'(POST /v1/actors/{t}/{actor_id} with {{"args": [...]}}, or {t}.get_or_create(id, ...))'
            )
        else:
            hint = f"{t} is declared with activate=False: create it first (POST /v1/actors/{t}/{actor_id})"
        return ActorNotFoundError(t, actor_id, hint)

    def __repr__(self) -> str:
        return f"<virtual actor type {self.type_name}>"

    # -------------------------------------------------------------- using
    def get_or_create(self, actor_id: str, *args: Any, **kwargs: Any) -> ActorHandle:
        """A handle to actor ``actor_id``, created with ``__init__(*args, **kwargs)`` if missing.

        Creation is atomic: when several callers race, exactly one ``__init__`` result is
        stored and the others' arguments are ignored, as they are when the actor exists.
        """
        check_actor_id(actor_id)
        self.check_init_args(args, kwargs)
        invoker().create(self, actor_id, args, kwargs)
        return ActorHandle(self, actor_id)

    def get(self, actor_id: str) -> ActorHandle:
        """A handle to actor ``actor_id``. For a class whose calls activate it (``__init__``
        needs no arguments, ``activate`` not switched off) every id is valid and nothing is
        read: the first call creates the actor (a deleted one's calls raise
        ``ActorNotFoundError``). For any other class the actor must exist, else
        ``ActorNotFoundError``."""
        check_actor_id(actor_id)
        if not self.activates:
            invoker().require(self, actor_id)
        return ActorHandle(self, actor_id)

    def exists(self, actor_id: str) -> bool:
        return invoker().exists(self, check_actor_id(actor_id))

    def list_ids(self, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        """Ids of the stored actors of this type, in byte order (pages with ``start_after``)."""
        return invoker().list_ids(self.type_name, start_after=start_after, limit=limit)

    def delete(self, actor_id: str) -> None:
        """Delete an actor: its state, idempotency records and pending messages. Idempotent."""
        invoker().delete(self, check_actor_id(actor_id))


class _VirtualActorDecorator:
    """``@workflow.virtual_actor`` and ``@workflow.virtual_actor(name=..., schema_version=...)``.

    ``schema_version`` is stored with each snapshot; when it rises, a class method or static
    method ``__migrate__(state, old_version)`` on the class turns an old state into a new one
    the next time the actor is loaded.

    Actors are virtual: a call on an id that was never created activates the actor, running
    ``__init__()`` and the method in one turn and one commit (two callers racing on a fresh id
    create it once), when ``__init__`` needs no arguments. ``activate=False`` makes such calls
    raise ``ActorNotFoundError`` instead, as they do when ``__init__`` needs arguments or the
    id's actor was deleted (a deleted actor stays gone until it is created again, so a late
    retry cannot bring it back). A read-only method on a never-created id runs on a fresh
    ``__init__()`` state and stores nothing.

    ``errors={InsufficientFunds: 409}`` declares exceptions that are the caller's fault: a
    method (or ``__init__``) raising one (or a subclass) answers that status (400 to 499) over
    HTTP instead of 500, with the same body (``{"error": "method_raised", "message", "type",
    ...}``). Like any exception a method raises, it changes nothing.
    """

    def __call__(
        self,
        cls: type | None = None,
        *,
        name: str | None = None,
        schema_version: int = 1,
        activate: bool = True,
        errors: Mapping[type[BaseException], int] | None = None,
    ) -> Any:
        def wrap(c: type) -> VirtualActorClass:
            if not inspect.isclass(c):
                raise TypeError(f"@workflow.virtual_actor decorates a class, not {c!r}")
            return VirtualActorClass(
                c, name=name, schema_version=schema_version, activate=activate, errors=errors
            )

        return wrap(cls) if cls is not None else wrap

    @staticmethod
    def event(name: str) -> Callable[[F], F]:
        """Mark a method as the handler of external event ``name``
        (``POST /v1/actors/{type}/{id}/events/{name}``); it receives the JSON payload."""
        check_id("event name", name)

        def mark(func: F) -> F:
            if not inspect.isfunction(func):
                raise TypeError(f"@virtual_actor.event decorates a method, not {func!r}")
            setattr(func, _EVENT, name)
            return func

        return mark

    @staticmethod
    def readonly(func: F) -> F:
        """Mark a method read-only: it sees the last committed state, runs concurrently with
        other calls, and whatever it changes on ``self`` is discarded."""
        if not inspect.isfunction(func):
            raise TypeError(f"@virtual_actor.readonly decorates a method, not {func!r}")
        setattr(func, _READONLY, True)
        return func


virtual_actor = _VirtualActorDecorator()

_registry: dict[str, VirtualActorClass] = {}
_registry_lock = threading.Lock()


def register(ac: VirtualActorClass) -> None:
    """Make ``ac`` findable by its type name (a later class with the same name replaces it)."""
    with _registry_lock:
        _registry[ac.type_name] = ac


def lookup(type_name: str) -> VirtualActorClass:
    """The registered actor type named ``type_name``; raises ``ActorTypeNotFoundError``."""
    ac = _registry.get(type_name)
    if ac is None:
        raise ActorTypeNotFoundError(type_name)
    return ac


def registered_types() -> dict[str, VirtualActorClass]:
    with _registry_lock:
        return dict(_registry)


def _check_errors(
    type_name: str, errors: Mapping[type[BaseException], int] | None
) -> dict[type[BaseException], int]:
    """``errors=`` as a dict; ConfigError unless it maps exception classes to 400..499."""
    if errors is None:
        return {}
    if not isinstance(errors, Mapping):
        raise ConfigError(f"virtual actor {type_name}: errors must map exception classes to statuses")
    out: dict[type[BaseException], int] = {}
    for kind, status in errors.items():
        if not (inspect.isclass(kind) and issubclass(kind, Exception)):
            raise ConfigError(
                f"virtual actor {type_name}: errors keys must be exception classes, not {kind!r}"
            )
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ConfigError(
                f"virtual actor {type_name}: the status for {kind.__name__} must be a client error "
                f"from 400 to 499, not {status!r} (an exception without one is a 500)"
            )
        out[kind] = status
    return out


def _restore_class(
    cls: type,
    type_name: str,
    schema_version: int,
    activate: bool = True,
    errors: Mapping[type[BaseException], int] | None = None,
) -> VirtualActorClass:
    existing = _registry.get(type_name)
    if existing is not None and existing.cls is cls:
        return existing
    return VirtualActorClass(
        cls, name=type_name, schema_version=schema_version, activate=activate, errors=errors
    )
