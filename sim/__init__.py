"""A user simulator for the tip policy: synthetic users with hidden preferences
and daily routines (sleep, calendar, steps, mood) who emit signals and react to
tips. ``sim.world`` is the environment the learning bench runs policies in;
``sim.signals`` turns a simulated day into ``tips.events.v1.Signal`` messages.
"""
