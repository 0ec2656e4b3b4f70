"""``deepgrid cluster plan|up|down|status|add-workers|remove-workers``: a deepgrid cluster on AWS (issue 12).

A Conf's ``cloud:`` section (deepgrid.config.cloud) says where; ``spec`` resolves it, ``userdata``
writes each host's start-up script (so no SSH is needed), ``plan`` says what ``up`` would create and
what it costs (``prices``), ``resources`` creates, lists and removes the tagged resources through
boto3 (``aws``: the client and its errors), and ``commands`` is the command line. boto3 is imported
only when a command talks to AWS.
"""
