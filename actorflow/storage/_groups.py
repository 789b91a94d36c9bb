"""Groups: which keys belong together, so that a sharded store can keep each commit on one shard.

Every key and every index member belongs to exactly one *group*, a string computed from the
key alone. A :class:`~actorflow.storage.Batch` must stay within one group (every backend
refuses one that does not, so that code which works on SQLite also works on Redis Cluster),
and a backend that shards (Redis: a hash tag per bucket of groups) keeps a group on one shard,
where a commit is one atomic script. The rule follows the layouts of the two layers above:

=================================================  ===========================================
key / index member                                 group
=================================================  ===========================================
``act/{t}/{a}/...``, ``acts/{t}/{a}``              ``{t}/{a}``: one actor
``wf/{wid}/...``, ``wfs/{wid}``                    the owner of ``wid`` (below)
member ``{t}/{a}/...`` of index ``timers``,        ``{t}/{a}``
``outbox``
index ``idem:{t}/{a}`` (all its members)           ``{t}/{a}``
anything else                                      ``""``: one shared group
=================================================  ===========================================

The owner of a workflow id ``{t}:{a}:{n}`` (``n`` digits: the sub-workflow an actor's turn
launched) is its actor's group ``{t}/{a}``, so the turn that launches it commits the actor's
state and the workflow's first records together; any other workflow id is its own group
``wf:{wid}``. (A user's workflow whose id happens to have that shape shares an actor's group:
harmless, it only places them side by side.)

Directories (what :meth:`~actorflow.storage.Storage.list_keys` lists) and indexes are either
inside one group (``act/{t}/{a}/idem/``, ``wf/{wid}/s/``, ``idem:{t}/{a}``) or *spread*: their
entries belong to many groups (``acts/{t}/`` lists every actor of a type, ``wfs/`` every
workflow, ``timers`` and ``outbox`` hold every actor's entries). A sharded backend keeps a
spread directory or index as one part per bucket and merges the parts when it reads.
"""

from __future__ import annotations

from actorflow.errors import StorageError

#: The group of every key outside the actor and workflow layouts.
SHARED = ""
#: Indexes whose members are ``{t}/{a}/...``, each in its actor's group.
_PER_MEMBER_INDEXES = frozenset({"timers", "outbox"})
_ACTOR_ROOTS = frozenset({"act", "acts"})
_WORKFLOW_ROOTS = frozenset({"wf", "wfs"})


def workflow_group(wid: str) -> str:
    """The group of workflow ``wid``'s keys (see the module docstring)."""
    head, sep, n = wid.rpartition(":")
    t, sep2, a = head.partition(":")
    if sep and sep2 and t and a and n.isdigit():
        return f"{t}/{a}"
    return f"wf:{wid}"


def key_group(key: str) -> str:
    """The group of ``key``."""
    parts = key.split("/", 3)
    root = parts[0]
    if root in _ACTOR_ROOTS and len(parts) >= 3 and parts[1] and parts[2]:
        return f"{parts[1]}/{parts[2]}"
    if root in _WORKFLOW_ROOTS and len(parts) >= 2 and parts[1]:
        if root == "wfs" and len(parts) > 2:
            return SHARED  # not a workflow listing entry
        return workflow_group(parts[1])
    return SHARED


def dir_group(directory: str) -> str | None:
    """The group of every key directly in ``directory`` (a key up to and including its last
    ``/``, or ``""``), or ``None`` when they belong to many groups (a spread directory)."""
    parts = directory.split("/")[:-1]  # the directory's segments, without the empty tail
    root = parts[0] if parts else ""
    if root in _ACTOR_ROOTS:
        if len(parts) >= 3:
            return key_group(directory)
        return None if len(parts) == 2 else SHARED  # acts/{t}/ spreads; acts/ holds no actor
    if root in _WORKFLOW_ROOTS:
        if root == "wfs":
            return None if len(parts) == 1 else SHARED
        return key_group(directory) if len(parts) >= 2 else None
    return SHARED


def index_group(index: str) -> str | None:
    """The group of every member of ``index``, or ``None`` for a spread index (each member in
    its own group, see :func:`member_group`)."""
    if index in _PER_MEMBER_INDEXES:
        return None
    if index.startswith("idem:"):
        return index[len("idem:") :]
    return SHARED


def member_group(index: str, member: str) -> str:
    """The group of ``member`` of ``index``."""
    group = index_group(index)
    if group is not None:
        return group
    parts = member.split("/", 2)
    return f"{parts[0]}/{parts[1]}" if len(parts) == 3 and parts[0] and parts[1] else SHARED


def batch_group(keys: list[str], members: list[tuple[str, str]], url: str) -> str:
    """The one group of a batch's keys and index members; :class:`StorageError` naming two of
    them when they belong to different groups. An empty batch is in :data:`SHARED`."""
    found: tuple[str, str] | None = None
    for what, group in [
        *((f"key {k!r}", key_group(k)) for k in keys),
        *((f"index {i!r} member {m!r}", member_group(i, m)) for i, m in members),
    ]:
        if found is None:
            found = (what, group)
        elif group != found[1]:
            raise StorageError(
                f"a commit must stay within one group (see actorflow.storage._groups): "
                f"{found[0]} is in group {found[1]!r}, {what} in group {group!r}",
                url,
            )
    return SHARED if found is None else found[1]
