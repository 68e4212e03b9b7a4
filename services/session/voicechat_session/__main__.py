"""``python -m voicechat_session``: the session service (see :mod:`voicechat_session.main`)."""

from voicechat_session.main import main

raise SystemExit(main())
