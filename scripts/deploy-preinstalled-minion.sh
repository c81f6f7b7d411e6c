#!/bin/sh
# A salt-cloud deploy script (profile `script: /path/to/this`) for templates whose
# salt-minion is already installed, such as `scripts/build-golden-image.sh --plain`: salt-cloud
# uploads the minion's key pair, config and grains beside this script (over SSH, into
# /tmp/.saltcloud-<uuid>), and this puts them in place and restarts the minion. Offline: unlike
# bootstrap-salt.sh it installs nothing. Extra arguments (the guide's `script_args: -F`) are
# ignored: the configuration is always written.
set -eu
d=$(dirname "$0")
install -d -m 700 /etc/salt/pki/minion
install -m 600 "$d/minion.pem" /etc/salt/pki/minion/minion.pem
install -m 644 "$d/minion.pub" /etc/salt/pki/minion/minion.pub
install -d /etc/salt/minion.d
install -m 644 "$d/minion" /etc/salt/minion.d/99-salt-cloud.conf
if [ -f "$d/grains" ]; then install -m 644 "$d/grains" /etc/salt/grains; fi
systemctl restart salt-minion
