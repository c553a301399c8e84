# Sourced by the guest scripts: sets GUEST_DIR, the folder the guest image and what goes
# with it live in (first that is set):
#   $VHU_GUEST_DIR
#   $CARGO_TARGET_DIR/guest
#   <repository>/target/guest
# REPO must be set to the repository's root.
if [ -n "${VHU_GUEST_DIR:-}" ]; then
    GUEST_DIR=$VHU_GUEST_DIR
elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
        /*) GUEST_DIR=$CARGO_TARGET_DIR/guest ;;
        *) GUEST_DIR=$PWD/$CARGO_TARGET_DIR/guest ;;
    esac
else
    GUEST_DIR=$REPO/target/guest
fi
