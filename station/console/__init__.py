"""The web console: HTML shells and static files served by the station; every datum comes from
/api/v1 with the user's own session (station/console/pages.py, static/console.js)."""
