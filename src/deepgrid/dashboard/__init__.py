"""The master's live dashboard: a web page and a JSON API served while it trains.

``plugin.start_dashboard(runner)`` (called at the end of ``ActorNetworkRunner.setup``) listens
where ``Conf.dashboard`` says (loopback and a free port by default) and
``plugin.stop_dashboard(runner)`` (first thing in ``shutdown``) stops it; ``server`` is the
aiohttp server, ``view`` what it serves, ``client`` what ``deepgrid status`` reads it with,
``address`` the Conf field's check (imported by every Conf, so this file imports nothing).
See the README's "Dashboard" section.
"""
