// A modal confirmation, the one every page uses (the native <dialog>: focus moves into it, Esc
// closes it). Its fields (children) sit in a form, so their own validation (required, min, max)
// applies before the action runs; when the API refuses, its reason stays on screen in the dialog.

import { useEffect, useId, useRef, useState, type FormEvent, type ReactNode } from "react";

import { ErrorBox } from "../States";

export interface ConfirmDialogProps {
  title: ReactNode;
  confirmLabel: string;
  danger?: boolean;
  /** Runs on confirm; the dialog closes when it resolves and shows the error when it throws. */
  onConfirm: () => Promise<void>;
  onClose: () => void;
  children?: ReactNode;
  cancelLabel?: string;
  busyLabel?: string;
  refusedTitle?: string;
}

export function ConfirmDialog({
  title,
  confirmLabel,
  danger,
  onConfirm,
  onClose,
  children,
  cancelLabel = "Close",
  busyLabel = "Working…",
  refusedTitle = "Refused",
}: ConfirmDialogProps) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<Error>();

  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.close();
  }, []);

  async function confirm(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setFailure(undefined);
    try {
      await onConfirm();
      onClose();
    } catch (error) {
      setFailure(error instanceof Error ? error : new Error(String(error)));
    } finally {
      setBusy(false);
    }
  }

  return (
    <dialog ref={ref} className="confirm" aria-labelledby={titleId} onCancel={onClose}>
      <form onSubmit={(event) => void confirm(event)}>
        <h2 id={titleId}>{title}</h2>
        {children}
        {failure && <ErrorBox error={failure} title={refusedTitle} />}
        <div className="actions">
          <button type="button" onClick={onClose} disabled={busy}>
            {cancelLabel}
          </button>
          <button type="submit" className={danger ? "primary danger-fill" : "primary"} disabled={busy}>
            {busy ? busyLabel : confirmLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}
