"""``python -m voicechat_llm``: same as the ``voicechat-llm`` command."""

from voicechat_llm.main import main

raise SystemExit(main())
