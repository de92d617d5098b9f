#!/bin/sh
# Stand-in for Fedora's /usr/lib/rpm/sysusers.generate-pre.sh: turn sysusers.d
# lines into the %pre scriptlet that creates the same users and groups on
# systems where rpm does not process sysusers.d itself.
for file in "$@"; do
    grep -v '^[[:space:]]*\(#\|$\)' "$file" | while read -r type name id gecos home shell; do
        case "$type" in
        g)
            if [ "$id" = "-" ] || [ -z "$id" ]; then
                echo "getent group '$name' >/dev/null || groupadd -r '$name' || :"
            else
                echo "getent group '$name' >/dev/null || groupadd -f -g '$id' -r '$name' || :"
            fi ;;
        u)
            echo "getent group '$name' >/dev/null || groupadd -r '$name' || :"
            echo "getent passwd '$name' >/dev/null || useradd -r -g '$name' -d '${home:-/}' -s '${shell:-/sbin/nologin}' -c '$(echo "$gecos" | tr -d '"')' '$name' || :" ;;
        *)
            echo "sysusers-generate-pre.sh: line type '$type' not supported" >&2; exit 1 ;;
        esac
    done
done
