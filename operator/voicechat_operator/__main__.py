"""``python -m voicechat_operator`` runs the operator."""

from voicechat_operator.main import main

main()
