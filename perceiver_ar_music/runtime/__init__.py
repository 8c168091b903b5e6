"""What every stage stands on: devices and precision (`devices`), thread counts (`threads`),
process groups (`distributed`), atomic writes (`atomic`), the one-line user error (`errors`) and
argument types shared by the commands (`cli_types`)."""
