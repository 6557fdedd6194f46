"""dvsan-shell: the operator's admin shell, a configshell-fb tree over the station's REST API."""
