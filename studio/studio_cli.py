"""``python -m studio``: the device room from a shell (scripted use) and the studio page.

    python -m studio generate "something relaxing" --db events.db [--storage events.device] [--seed N] [--json]
    python -m studio request "something relaxing" --db events.db          # what would be asked, and why; logs nothing
    python -m studio react 000001 keep --db events.db                     # or redo, style --genre jazz, tempo --bpm 80,
                                                                           # instrument --instrument piano --on/--off
    python -m studio status --db events.db [--json]
    python -m studio serve --db events.db [--port 8765]                   # the studio page on 127.0.0.1

Exit codes: 0 done, 2 the command could not run (a missing or unreadable file, a bad value: the message names the
flag or file and how to fix it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


class CannotRun(Exception):
    """What the user must fix; printed as ``error: ...`` with exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="The device room: personalised ACE-Step "
                                     "generation on this device (nothing is sent anywhere).")
    sub = parser.add_subparsers(dest="command", required=True)

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", required=True, help="this device's log store (SQLite, python -m client.logs)")
        p.add_argument("--storage", help="this device's storage folder (default: DB.device/ beside --db, where the "
                                         "ClientApp keeps the global prior)")
        p.add_argument("--json", action="store_true", help="print JSON")

    for name, text in (("generate", "log the request, generate the piece, write its WAV"),
                       ("request", "what would be asked of ACE-Step, and why (logs nothing)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("prompt", help="what you want, in your words")
        device(p)
        p.add_argument("--seed", type=int, help="generation seed (default: random)")
        p.add_argument("--duration", type=float, default=10.0, help="seconds of music, 10-600 (default: %(default)s)")
        p.add_argument("--pipeline-dir", help="an ACE-Step 1.5 folder in diffusers format already on this device "
                                              "(default: the tiny random-weight pipeline, whose audio is noise)")
    p = sub.add_parser("react", help="log your reaction to a piece (the next round trains on it)")
    p.add_argument("piece", help="the piece's id, as generate printed it (six digits)")
    p.add_argument("reaction", choices=("keep", "redo", "style", "tempo", "instrument"))
    device(p)
    p.add_argument("--genre", help="for style: the genre you chose instead")
    p.add_argument("--bpm", type=float, help="for tempo: the tempo you set")
    p.add_argument("--instrument", help="for instrument: the instrument you switched")
    p.add_argument("--on", dest="enabled", action="store_true", default=None, help="for instrument: switched on")
    p.add_argument("--off", dest="enabled", action="store_false", help="for instrument: switched off")
    p = sub.add_parser("status", help="the log, the kept prior, the personal offset, the pieces")
    device(p)
    p = sub.add_parser("serve", help="the studio page, on 127.0.0.1 only")
    device(p)
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--pipeline-dir", help="as for generate")
    return parser


def _room(args: argparse.Namespace, *, create: bool):
    """The room over ``--db`` and ``--storage``, after checking them (``CannotRun`` names the flag and the fix)."""
    from client.log_store import LogStoreError
    from studio.room import DeviceRoom, RoomSettings
    from generation.conditioning import ConditioningConfig

    db = Path(args.db).expanduser()
    if not create and not db.is_file():
        raise CannotRun(f"--db {db}: no log store there. Generate something first (python -m studio generate "
                        f"PROMPT --db {db}) or import a log (python -m client.logs import FILE --db {db}).")
    storage = Path(args.storage).expanduser() if args.storage else None
    if storage is not None and storage.exists() and not storage.is_dir():
        raise CannotRun(f"--storage {storage} is a file; it must be a folder (or a path where one can be created).")
    pipeline_dir = getattr(args, "pipeline_dir", None)
    if pipeline_dir is not None:
        from generation.pipeline_folder import missing_parts

        missing = missing_parts(Path(pipeline_dir).expanduser())
        if missing:
            raise CannotRun(f"--pipeline-dir {pipeline_dir} is not a complete ACE-Step 1.5 pipeline folder "
                            f"(diffusers format). Missing: {'; '.join(missing)}. Nothing is downloaded.")
    duration = getattr(args, "duration", 10.0)
    if not 10.0 <= duration <= 600.0:
        raise CannotRun(f"--duration must be between 10 and 600 seconds; found {duration}.")
    try:
        return DeviceRoom(db, storage, settings=RoomSettings(conditioning=ConditioningConfig(duration_s=duration)),
                          pipeline_dir=pipeline_dir)
    except LogStoreError as error:
        raise CannotRun(f"--db: {error}") from None


def _print_proposal(why: dict, call: dict) -> None:
    print(f"asked of ACE-Step 1.5: {call['prompt']!r}, bpm {call['bpm']}, {call['audio_duration']:.0f} s, "
          f"seed {call['generator']['seed']}")
    top = sorted(why["preference"].items(), key=lambda kv: -kv[1])[:3]
    print(f"why: genres {why['genres']['value']} from {why['genres']['from']} ({why['preference_source']}: "
          + ", ".join(f"{g} {p:.2f}" for g, p in top) + f"); tempo from {why['bpm']['from']}; "
          f"the prompt decided {json.dumps({k: v for k, v in why['prompt_won'].items() if v})}")


def run(args: argparse.Namespace) -> int:
    from studio.room import RoomError

    try:
        if args.command == "serve":
            from studio.web import serve

            return serve(_room(args, create=True), port=args.port)
        room = _room(args, create=args.command in ("generate", "request"))
        with room:
            if args.command == "request":
                proposal = room.request(args.prompt, seed=args.seed)
                if args.json:
                    print(json.dumps({"call": proposal.call, "why": proposal.why()}))
                else:
                    _print_proposal(proposal.why(), proposal.call)
            elif args.command == "generate":
                piece = room.generate(args.prompt, seed=args.seed)
                if args.json:
                    print(json.dumps({"piece": piece.id, "audio": str(piece.audio_path), "source": piece.source,
                                      "seconds": piece.seconds, "call": piece.proposal.call, "why": piece.proposal.why()}))
                else:
                    _print_proposal(piece.proposal.why(), piece.proposal.call)
                    print(f"piece {piece.id}: {piece.audio_path} ({piece.source}, {piece.seconds:.2f} s)"
                          + ("; the tiny pipeline's audio is noise" if piece.source.endswith("tiny") else ""))
                    print(f"react with: python -m studio react {piece.id} keep --db {args.db}")
            elif args.command == "react":
                [event] = room.react(args.piece, args.reaction, genre=args.genre, bpm=args.bpm,
                                     instrument=args.instrument, enabled=args.enabled)
                line = json.dumps(event.to_json_dict())
                print(line if args.json else f"logged: {line}")
            else:
                status = room.status()
                print(json.dumps(status, indent=None if args.json else 2))
        return 0
    except (CannotRun, RoomError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(_parser().parse_args(argv))
