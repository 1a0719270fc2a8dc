// A modal confirmation (the native <dialog>: focus moves into it, Esc closes it). The action
// runs on confirm; when the API refuses, its reason stays on screen in the dialog.

import { useEffect, useRef, useState, type ReactNode } from "react";

import { ErrorBox } from "../../components/States";

export interface ConfirmDialogProps {
  title: string;
  confirmLabel: string;
  danger?: boolean;
  onConfirm: () => Promise<void>;
  onClose: () => void;
  children?: ReactNode;
}

export function ConfirmDialog({ title, confirmLabel, danger, onConfirm, onClose, children }: ConfirmDialogProps) {
  const ref = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<Error>();

  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.close();
  }, []);

  async function confirm() {
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
    <dialog ref={ref} className="confirm" aria-labelledby="confirm-title" onCancel={onClose}>
      <h2 id="confirm-title">{title}</h2>
      {children}
      {failure && <ErrorBox error={failure} title="Refused" />}
      <div className="actions">
        <button type="button" onClick={onClose}>
          Close
        </button>
        <button type="button" className={danger ? "primary danger-fill" : "primary"} disabled={busy} onClick={() => void confirm()}>
          {busy ? "Working…" : confirmLabel}
        </button>
      </div>
    </dialog>
  );
}
