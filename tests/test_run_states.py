"""The one state machine (hpml_core/contract/run_states.py), walked transition by transition: every
rule of ``decide`` (with the reason it gives), every ending ``from_rank_files`` reads, and
Slurm's words ``from_slurm`` translates. Each row is the evidence and what must be decided."""

from __future__ import annotations

import re

import pytest

from hpml_core.contract import run_states as rs
from hpml_core.contract.run_states import (ACTIVE, CANCELLED, COMPLETED, ENDED_BADLY, FAILED, INTERRUPTED, NODE_FAIL,
                                       NOT_SUBMITTED, OUT_OF_MEMORY, PENDING, PREEMPTED, RUNNING, STATES, STOPPED,
                                       SUBMIT_FAILED, SUBMITTING, TIMEOUT, decide, from_rank_files, from_slurm)

NONE = (None, None)
DONE = (COMPLETED, "")
OOM = (OUT_OF_MEMORY, "rank 1: out of memory at batch size 8")
BROKEN = (FAILED, "rank 0: RuntimeError: boom")
HALTED = (STOPPED, "rank 0: stopped by SIGTERM; checkpoint saved")
SLURM = "Slurm (sacct): "

# (rule, recorded, scheduler, files, keywords, expected state, expected why)
DECISIONS = [
    # 1: the scheduler holds the current attempt, whatever older files and records say
    (1, RUNNING, PENDING, HALTED, {"said_by": SLURM + "REQUEUED"}, PENDING, SLURM + "REQUEUED"),
    (1, PENDING, RUNNING, DONE, {"said_by": SLURM + "COMPLETING"}, RUNNING, SLURM + "COMPLETING"),
    (1, SUBMIT_FAILED, PENDING, NONE, {}, PENDING, "Slurm"),
    # 2: the hpml submit holding the run lives
    (2, SUBMITTING, None, BROKEN, {"submitter_alive": True}, SUBMITTING, "hpml submit is submitting it"),
    (2, RUNNING, None, DONE, {"submitter_alive": True, "local": True}, RUNNING, "hpml submit runs it here"),
    # ... but a Slurm run recorded RUNNING is not held by its (former) submitter
    (2, RUNNING, None, DONE, {"submitter_alive": True}, COMPLETED, ""),
    # 3: the engine finished, or knows why it could not, whatever the job's exit
    (3, RUNNING, COMPLETED, DONE, {}, COMPLETED, ""),
    (3, RUNNING, FAILED, OOM, {"said_by": "exit status 1", "local": True}, *OOM),
    (3, RUNNING, CANCELLED, DONE, {}, COMPLETED, ""),
    (3, CANCELLED, None, OOM, {}, *OOM),
    # 4: the scheduler ended it in a way of its own, with what the ranks managed to write
    (4, RUNNING, CANCELLED, HALTED, {"said_by": SLURM + "CANCELLED by 0"}, CANCELLED,
     SLURM + "CANCELLED by 0; " + HALTED[1]),
    (4, RUNNING, TIMEOUT, NONE, {"said_by": SLURM + "TIMEOUT"}, TIMEOUT, SLURM + "TIMEOUT"),
    (4, RUNNING, NODE_FAIL, BROKEN, {"said_by": SLURM + "NODE_FAIL"}, NODE_FAIL, SLURM + "NODE_FAIL; " + BROKEN[1]),
    (4, RUNNING, PREEMPTED, HALTED, {}, PREEMPTED, "Slurm; " + HALTED[1]),
    (4, RUNNING, OUT_OF_MEMORY, BROKEN, {}, OUT_OF_MEMORY, "Slurm; " + BROKEN[1]),
    # 5: Slurm has forgotten the job; the ending it gave, as recorded, still wins over a stop
    (5, CANCELLED, None, HALTED, {"recorded_why": SLURM + "CANCELLED by 0"}, CANCELLED, SLURM + "CANCELLED by 0"),
    (5, TIMEOUT, None, NONE, {}, TIMEOUT, "as last recorded"),
    # 6: the engine's FAILED or STOPPED; a job exiting non-zero (or a requeue not made) adds nothing
    (6, RUNNING, FAILED, BROKEN, {}, *BROKEN),
    (6, RUNNING, FAILED, HALTED, {"said_by": "exit status 1", "local": True}, *HALTED),
    (6, RUNNING, COMPLETED, HALTED, {}, *HALTED),
    (6, RUNNING, None, BROKEN, {}, *BROKEN),
    (6, None, None, HALTED, {}, *HALTED),
    # 7: the job failed before any rank wrote
    (7, RUNNING, FAILED, NONE, {"said_by": SLURM + "FAILED"}, FAILED, SLURM + "FAILED"),
    (7, RUNNING, FAILED, NONE, {"said_by": "exit status 2", "local": True}, FAILED, "exit status 2"),
    # 8: the job completed, and no rank wrote
    (8, RUNNING, COMPLETED, NONE, {"said_by": SLURM + "COMPLETED"}, FAILED,
     SLURM + "COMPLETED, but the last attempt wrote no rank file"),
    (8, RUNNING, COMPLETED, NONE, {"said_by": "exit status 0", "local": True}, FAILED,
     "exit status 0, but the last attempt wrote no rank file"),
    # 9: submitting, and its hpml submit is gone (dead, or hung past its time)
    (9, SUBMITTING, None, NONE, {}, SUBMIT_FAILED, "its hpml submit is gone"),
    # 10: running here, and its hpml submit is gone
    (10, RUNNING, None, NONE, {"local": True}, INTERRUPTED, "its hpml submit is gone"),
    # 11: pending or running in Slurm, then nothing: lost; unless Slurm did not answer at all
    (11, RUNNING, None, NONE, {}, FAILED, "Slurm no longer knows the job, and it wrote no rank file"),
    (11, PENDING, None, NONE, {}, FAILED, "Slurm no longer knows the job, and it wrote no rank file"),
    (11, PENDING, None, NONE, {"answered": False}, PENDING, "as last recorded: Slurm did not answer"),
    (11, RUNNING, None, NONE, {"answered": False}, RUNNING, "as last recorded: Slurm did not answer"),
    # 12: recorded COMPLETED, its files gone
    (12, COMPLETED, None, NONE, {}, FAILED, "recorded COMPLETED, but the last attempt's rank files are gone"),
    # 13: never submitted
    (13, None, None, NONE, {}, NOT_SUBMITTED, ""),
    # 14: otherwise, as recorded
    (14, SUBMIT_FAILED, None, NONE, {"recorded_why": "sbatch did not answer within 60 s"}, SUBMIT_FAILED,
     "sbatch did not answer within 60 s"),
    (14, INTERRUPTED, None, NONE, {}, INTERRUPTED, "as last recorded"),
    (14, FAILED, None, NONE, {"recorded_why": "exit status 2"}, FAILED, "exit status 2"),
    (14, OUT_OF_MEMORY, None, NONE, {"local": True, "recorded_why": OOM[1]}, *OOM),
]


@pytest.mark.parametrize("rule,recorded,scheduler,files,keywords,state,why", DECISIONS,
                         ids=[f"rule{row[0]}-{row[1]}-{row[2]}-{row[3][0]}" for row in DECISIONS])
def test_decide(rule, recorded, scheduler, files, keywords, state, why):
    assert decide(recorded, scheduler, files, **keywords) == (state, why)


def test_every_rule_of_decide_is_walked():
    """Each numbered rule of decide's docstring has a row above, and no row names a rule it lacks."""
    documented = {int(number) for number in re.findall(r"^\s*(\d+)\. ", decide.__doc__, re.MULTILINE)}
    assert documented == set(range(1, 15))
    assert {row[0] for row in DECISIONS} == documented


def test_every_decision_is_a_state_of_the_vocabulary():
    assert {row[5] for row in DECISIONS} <= set(STATES)
    assert set(STATES) - {row[5] for row in DECISIONS} == set()  # and every state is reached


def test_decisions_recorded_and_decided_again_stay_put():
    """The ledger records each decision, and the next one starts from it: once Slurm forgets a
    job, what was decided with its word stands (rule 5, 6, 14 on the recorded state)."""
    for _, recorded, scheduler, files, keywords, state, why in DECISIONS:
        if state in ACTIVE or state == NOT_SUBMITTED or keywords.get("answered") is False:
            continue
        again = decide(state, None, files, local=keywords.get("local", False), recorded_why=why)
        assert again == (state, why), (recorded, scheduler, files, keywords)


def test_active_and_ended_badly_split_the_vocabulary():
    assert ACTIVE == {SUBMITTING, PENDING, RUNNING}
    assert ENDED_BADLY == set(STATES) - ACTIVE - {COMPLETED, NOT_SUBMITTED}
    assert rs.ENDED_BY_SCHEDULER <= ENDED_BADLY


# (outcomes by rank, errors by rank, world size, expected)
RANK_FILES = [
    ({}, {}, 2, NONE),
    ({0: "COMPLETED", 1: "COMPLETED"}, {}, 2, DONE),
    ({0: "FAILED", 1: "OUT_OF_MEMORY"}, {1: "out of memory at batch size 8"}, 2, OOM),
    ({1: "OUT_OF_MEMORY"}, {}, 2, (OUT_OF_MEMORY, "rank 1: out of memory")),  # the other was killed: still OOM
    ({0: "FAILED", 1: "COMPLETED"}, {0: "RuntimeError: boom"}, 2, BROKEN),
    ({0: "FAILED", 1: "FAILED", 3: "FAILED"}, {0: "RuntimeError: Connection closed by peer"}, 4,
     (FAILED, "no rank file from rank(s) 2: killed before writing it; "
              "rank 0: RuntimeError: Connection closed by peer")),
    ({0: "COMPLETED", 2: "COMPLETED"}, {}, 4, (FAILED, "no rank file from rank(s) 1, 3: killed before writing it")),
    ({0: "COMPLETED", 1: rs.UNREADABLE}, {}, 2, (FAILED, "the rank file of rank(s) 1 is unreadable")),
    ({0: "STOPPED", 1: "STOPPED"}, {0: "stopped by SIGTERM; checkpoint saved"}, 2, HALTED),
    ({0: "STOPPED", 1: "COMPLETED"}, {}, 2, (STOPPED, "rank 0: stopped")),
    ({0: "STOPPED"}, {}, 2, (FAILED, "no rank file from rank(s) 1: killed before writing it")),
    ({0: "FAILED", 1: "STOPPED"}, {}, 2, (FAILED, "rank 0: failed")),
    ({0: "something new"}, {}, 1, (FAILED, "rank 0: failed")),
]


@pytest.mark.parametrize("outcomes,errors,world,expected", RANK_FILES)
def test_from_rank_files(outcomes, errors, world, expected):
    assert from_rank_files(outcomes, world, errors) == expected


@pytest.mark.parametrize("slurm,state", [
    ("PENDING", PENDING), ("CONFIGURING", PENDING), ("REQUEUED", PENDING), ("REQUEUE_HOLD", PENDING),
    ("REQUEUE_FED", PENDING), ("RESIZING", PENDING), ("SUSPENDED", PENDING),
    ("RUNNING", RUNNING), ("COMPLETING", RUNNING), ("SIGNALING", RUNNING), ("STAGE_OUT", RUNNING),
    ("COMPLETED", COMPLETED), ("FAILED", FAILED), ("OUT_OF_MEMORY", OUT_OF_MEMORY), ("TIMEOUT", TIMEOUT),
    ("DEADLINE", TIMEOUT), ("CANCELLED", CANCELLED), ("CANCELLED by 1000", CANCELLED), ("PREEMPTED", PREEMPTED),
    ("NODE_FAIL", NODE_FAIL), ("BOOT_FAIL", NODE_FAIL), ("SPECIAL_EXIT", FAILED), ("", FAILED),
])
def test_from_slurm(slurm, state):
    assert from_slurm(slurm) == state


def test_every_slurm_word_is_walked():
    walked = {name for name, _ in test_from_slurm.pytestmark[0].args[1]}
    assert set(rs.SLURM_STATES) <= walked
