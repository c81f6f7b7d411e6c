#!/bin/busybox sh
# udhcpc's lease script in virtseed's initramfs (guest/initramfs-init). The default route is
# marked proto dhcp (16) with the leased source address: that is how networkd recognises the
# lease as dynamic and keeps it (KeepConfiguration=dhcp) until its own DHCP client renews it.
bb=/bin/busybox
case $1 in
    deconfig)
        $bb ip link set "$interface" up
        $bb ip -4 addr flush dev "$interface"
        ;;
    bound|renew)
        $bb ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do
            $bb ip route add default via "$r" dev "$interface" proto 16 src "$ip" && break
        done
        ;;
esac
exit 0
