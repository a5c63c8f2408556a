"""How people drive Opus: the command table, SSH, apps, keys, up and down."""
