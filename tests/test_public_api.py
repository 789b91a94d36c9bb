"""The public surface is explicit and pinned; every error has a place in the tree and a status."""

from __future__ import annotations

import inspect

from actorflow import errors, workflow


def test_workflow_exports_are_pinned() -> None:
    assert sorted(workflow.__all__) == [
        "ActorHandle",
        "CANCELED",
        "EventListener",
        "FAILED",
        "PENDING",
        "RESUMABLE",
        "RUNNING",
        "SUCCESSFUL",
        "StepFailure",
        "StepFunction",
        "StepOptions",
        "VirtualActorClass",
        "Workflow",
        "WorkflowCancellationError",
        "WorkflowCancelledError",
        "WorkflowError",
        "WorkflowExecutionError",
        "WorkflowNotFoundError",
        "WorkflowRuntime",
        "WorkflowStatus",
        "WorkflowTimeoutError",
        "cancel",
        "continuation",
        "current_actor",
        "delete",
        "get_actor",
        "get_metadata",
        "get_output",
        "get_output_async",
        "get_status",
        "init",
        "list_all",
        "options",
        "post_event",
        "resume",
        "resume_all",
        "resume_async",
        "run",
        "run_async",
        "send",
        "sleep",
        "step",
        "timers",
        "virtual_actor",
        "wait_for_event",
    ]
    for name in workflow.__all__:
        assert hasattr(workflow, name), name


def test_every_error_is_rooted_drawn_and_mapped_to_a_status() -> None:
    from actorflow.serve.api import status_for

    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(c, errors.ActorflowError) for c in classes)
    assert set(errors.__all__) == {
        name
        for name, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.ActorflowError)
    }
    for c in classes:
        assert c.__name__ in (errors.__doc__ or ""), f"{c.__name__} is missing from the tree in errors.py"
        exc = errors.rebuild(c, "x", {})
        status, code = status_for(exc)
        assert code != "method_raised" and 400 <= status < 600, c
